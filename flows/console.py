"""What the commands print: the summary, the error and warning lines, and the console the terminal mode draws
on (stderr, so stdout holds only the summary)."""
from __future__ import annotations

import sys

from flows.signals import EXIT_FAILED, EXIT_OK


def console():
    from rich.console import Console
    return Console(stderr=True, highlight=False)


def print_result(result, seconds: float | None = None, active_seconds: float | None = None,
                 nothing: str | None = None) -> int:
    """The summary (or preview) on stdout, what went wrong on stderr; the exit code it means. `seconds`: the
    whole command's time; `nothing`: the warning for a run that selected nothing."""
    from core.report import Summary
    if isinstance(result, Summary):
        print(result.text(seconds=seconds, active_seconds=active_seconds))
    else:
        print(result.text())
    if getattr(result, "incomplete", ""):
        print(f"error: {result.incomplete}", file=sys.stderr)
    if nothing:
        print(f"warning: {nothing}", file=sys.stderr)
    return EXIT_OK if getattr(result, "ok", True) else EXIT_FAILED
