"""Fault bookkeeping shared by the test servers: which request gets which fault, and request counts.

A server keeps one `FaultBook` per kind of target (objects, bucket listings, Feishu media) and asks it,
for every request, which fault to perform; how to perform one (a status answer, a reset, a short body,
a trickle...) stays with the server, which alone knows its protocol. Prefect-free and stdlib-only.
"""
from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Kind -> its parameters and their defaults. Servers pick the kinds they can perform.
OBJECT_FAULTS: Mapping[str, Mapping[str, Any]] = {
    "status": {"status": 500, "code": "InternalError"},   # an error answer in the store's dialect
    "reset": {},                                          # TCP RST instead of an answer
    "truncate": {},                                       # full Content-Length, half the body, hang up
    "delay": {"seconds": 0.0},                            # stall, then answer normally
    "short": {"fraction": 0.5},                           # a clean answer whose body is cut short
    "wrong_range": {"shift": 1},                          # 206 for another range than asked
    "ignore_range": {},                                   # 200 with the whole object despite Range
    "trickle": {"chunk": 1, "seconds": 2.0},              # the body `chunk` bytes every `seconds`
}
LIST_FAULTS: Mapping[str, Mapping[str, Any]] = {
    "status": {"status": 500, "code": "InternalError"},
    "reset": {},
    "delay": {"seconds": 0.0},
    # IsTruncated=true but no next marker/token (S3: the element is left out; OSS: it is empty, since
    # oss2 cannot even parse a truncated page without one).
    "truncated_no_token": {},
    "repeat_token": {},         # IsTruncated=true, and the next marker/token is the one the request sent
}
# Faults that only make sense for a request with a Range header; other requests pass them by.
RANGE_ONLY = frozenset({"wrong_range", "ignore_range"})
# Faults that rewrite a successful answer; error answers (404, 304, 412...) pass through unchanged.
BODY_FAULTS = frozenset({"short", "wrong_range", "ignore_range", "trickle", "truncate"})

_CHECKS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "status": (lambda v: isinstance(v, int) and 100 <= v <= 599, "an HTTP status code"),
    "code": (lambda v: isinstance(v, str) and v != "", "a non-empty error code"),
    "seconds": (lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0"),
    "fraction": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
    "shift": (lambda v: isinstance(v, int), "an integer"),
    "chunk": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
}


@dataclass
class Fault:
    """One injected fault: its kind, its parameters (read as attributes: fault.seconds) and its reach."""
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    times: int | None = None   # uses left; None: every matching request
    nth: int | None = None     # only the request with this 0-based index to the target; None: any

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["params"][name]
        except KeyError:
            raise AttributeError(f"{self.kind!r} fault has no parameter {name!r}") from None


class FaultBook:
    """Faults per target (any hashable: (bucket, key), a bucket, a file token) and requests per target.

    For each request the server calls `take(target)`: the request is counted, and the first fault added
    for that target that applies to it and still has uses left is returned (and one use spent).
    """

    def __init__(self, kinds: Mapping[str, Mapping[str, Any]]):
        self.kinds = kinds
        self._lock = threading.Lock()
        self._faults: dict[Hashable, list[Fault]] = {}
        self._counts: dict[Hashable, int] = {}

    def add(self, target: Hashable, kind: str, times: int | None = None, nth: int | None = None,
            **params: Any) -> Fault:
        if kind not in self.kinds:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(self.kinds)}")
        unknown = sorted(set(params) - set(self.kinds[kind]))
        if unknown:
            takes = ", ".join(self.kinds[kind]) or "no parameters"
            raise TypeError(f"fault {kind!r} takes {takes}, not {', '.join(unknown)}")
        for name, value in params.items():
            ok, what = _CHECKS[name]
            if not ok(value):
                raise ValueError(f"fault {kind!r}: {name} must be {what}, not {value!r}")
        for name, value in (("times", times), ("nth", nth)):
            if value is not None and not (isinstance(value, int) and value >= 0):
                raise ValueError(f"fault {kind!r}: {name} must be None or an integer >= 0, not {value!r}")
        fault = Fault(kind, {**self.kinds[kind], **params}, times, nth)
        with self._lock:
            self._faults.setdefault(target, []).append(fault)
        return fault

    def take(self, target: Hashable, applies: Callable[[Fault], bool] = lambda fault: True) -> Fault | None:
        """Count one request to `target`; return the fault it gets, if any."""
        with self._lock:
            index = self._counts.get(target, 0)
            self._counts[target] = index + 1
            for fault in self._faults.get(target, ()):
                if (fault.nth is not None and fault.nth != index) or fault.times == 0 or not applies(fault):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def count(self, target: Hashable) -> int:
        """Requests to `target` since the last clear, faulted ones included."""
        with self._lock:
            return self._counts.get(target, 0)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    def clear(self) -> None:
        self.clear_faults()
        self.clear_counts()


def shifted_range(first: int, last: int, size: int, shift: int) -> tuple[int, int]:
    """The inclusive range `shift` bytes away from first..last, clipped to an object of `size` bytes.

    At an edge of the object the clipped range is shorter; a one-byte range at the very edge, shifted
    outwards, stays where it was (there is no other byte to answer with).
    """
    new_first = min(max(first + shift, 0), size - 1)
    new_last = min(max(last + shift, new_first), size - 1)
    return new_first, new_last


def short_length(size: int, fraction: float) -> int:
    """How many bytes a "short" fault sends of a `size`-byte body: always fewer, unless it is empty."""
    return int(size * fraction)


def wait_unless_hung_up(sock: socket.socket, seconds: float, stopping: threading.Event) -> bool:
    """Wait up to `seconds`; return True early once the peer has closed or reset `sock`, or the server
    is stopping, so a trickle ends with its client instead of writing into a dead socket for minutes."""
    deadline = time.monotonic() + seconds
    while not stopping.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([sock], [], [], min(left, 0.1))
        if not readable:
            continue
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                return True                      # orderly close (FIN)
        except BlockingIOError:
            continue
        except OSError:
            return True                          # reset, or the socket is already closed
        time.sleep(min(left, 0.1))               # bytes waiting (a pipelined request): not a hang-up
    return True
