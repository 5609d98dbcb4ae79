"""How a command ends: Ctrl-C and SIGTERM stop it in order, and what escapes its body becomes one line on
stderr and an exit code (README: exit codes), never a traceback. Shared by the download and Feishu commands."""
from __future__ import annotations

import os
import signal
import sys
import time

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_EMPTY, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
RESUMES = "the same command resumes where this run stopped"
# A onefile executable runs as two processes in the terminal's process group (PyInstaller's bootloader and
# the program), and the bootloader forwards every signal it gets: one Ctrl-C arrives twice, a few ms apart.
SAME_SIGNAL_SECONDS = 0.5 if getattr(sys, "frozen", False) else 0.0


def on_ctrl_c(stop_at_once=lambda: None) -> None:
    """The first Ctrl-C stops the run in order (KeyboardInterrupt: what finished is recorded, the flow run ends
    Crashed); a second one, while that happens, exits at once (after `stop_at_once()`: the temporary server)."""
    first_at = 0.0

    def first(signum, frame):
        nonlocal first_at
        first_at = time.monotonic()
        signal.signal(signal.SIGINT, second)
        raise KeyboardInterrupt

    def second(signum, frame):
        if time.monotonic() - first_at < SAME_SIGNAL_SECONDS:
            return  # the first one, forwarded by the executable's bootloader
        os.write(2, f"\ninterrupted again: stopped at once; {RESUMES}\n".encode())
        stop_at_once()
        os._exit(EXIT_INTERRUPTED)
    signal.signal(signal.SIGINT, first)


_terminated_at: float | None = None


def _sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler or `kill` stopping the run) stops it the way Ctrl-C does."""
    global _terminated_at
    if _terminated_at is not None and time.monotonic() - _terminated_at < SAME_SIGNAL_SECONDS:
        return  # the same SIGTERM, sent to the process group and forwarded by the executable's bootloader
    _terminated_at = time.monotonic()
    raise KeyboardInterrupt


def exit_code(run, interrupted=None) -> int:
    """Run a command body and map what escapes it to the exit codes (2 usage, 3 nothing selected with
    --fail-if-empty, 130 Ctrl-C, 143 SIGTERM, 1 otherwise), with one line on stderr and never a traceback.
    `interrupted()`: what to say on Ctrl-C."""
    from core.errors import NothingSelected, ObjectsFailed, UsageError
    from flows.console import print_result
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return run()
    except ObjectsFailed as exc:  # the run finished, its flow run is Failed: print its summary, exit 1
        return print_result(exc.summary)
    except (ValueError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NothingSelected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_EMPTY
    except KeyboardInterrupt:
        if _terminated_at is not None:
            print(f"\nstopped (SIGTERM): {RESUMES}", file=sys.stderr)
            return EXIT_TERMINATED
        message = interrupted() if interrupted else f"interrupted: {RESUMES}"
        print(f"\n{message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
