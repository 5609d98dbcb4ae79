"""moto's S3 server on loopback, with fault injection, for tests and the demo.

Faults are injected by a small WSGI middleware in front of moto: status codes with S3 error XML,
connection resets, truncated bodies and delays, on GETs of chosen keys.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

import boto3
from botocore.config import Config
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

ACCESS_KEY, SECRET_KEY = "test-access-key", "test-secret-key"


@dataclass
class Fault:
    kind: str                 # "status" | "reset" | "truncate" | "delay"
    status: int = 500
    code: str = "InternalError"
    seconds: float = 0.0
    times: int | None = None  # None: every time


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class FaultInjector:
    def __init__(self, app):
        self.app = app
        self.faults: dict[str, list[Fault]] = {}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.gets: dict[str, int] = {}
        self.starts: list[float] = []  # monotonic start time of every request

    def _take(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults.get(path, []):
                if fault.times is None:
                    return fault
                if fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def __call__(self, environ, start_response):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.starts.append(time.monotonic())
        try:
            path = unquote(environ.get("PATH_INFO", ""))
            fault = None
            if environ["REQUEST_METHOD"] == "GET" and not environ.get("QUERY_STRING", "").startswith("list-type"):
                with self.lock:
                    self.gets[path] = self.gets.get(path, 0) + 1
                fault = self._take(path)
            if fault is None:
                return list(self.app(environ, start_response))
            return self._inject(fault, environ, start_response)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _inject(self, fault: Fault, environ, start_response):
        if fault.kind == "delay":
            time.sleep(fault.seconds)
            return list(self.app(environ, start_response))
        if fault.kind == "status":
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                    f"<Message>injected fault</Message></Error>").encode()
            start_response(f"{fault.status} Injected", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(body)))])
            return [body]
        sock: socket.socket = environ["werkzeug.socket"]
        if fault.kind == "reset":
            # SO_LINGER 0: close() sends RST, which the client sees as a reset connection.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return []
        if fault.kind == "truncate":
            captured = {}

            def capture(status, headers, exc_info=None):
                captured["status"], captured["headers"] = status, headers
            body = b"".join(self.app(environ, capture))
            start_response(captured["status"], captured["headers"])
            return _then_close(body[: len(body) // 2], sock)
        raise ValueError(f"unknown fault kind {fault.kind!r}")


def _then_close(half: bytes, sock: socket.socket):
    """Send the headers (full Content-Length) and half the body, then hang up."""
    yield half
    sock.shutdown(socket.SHUT_RDWR)


class MotoS3(ThreadedMotoServer):
    """ThreadedMotoServer on 127.0.0.1 and a free port, with `add_fault` and request counters."""
    backend = "s3"

    def __init__(self):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.injector: FaultInjector | None = None

    def _server_entry(self) -> None:
        self.injector = FaultInjector(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, self.injector, True,
                                   request_handler=_QuietHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def __enter__(self) -> "MotoS3":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required",
                                          s3={"addressing_style": "path"}))

    def add_fault(self, bucket: str, key: str, kind: str, **kwargs) -> None:
        with self.injector.lock:
            self.injector.faults.setdefault(f"/{bucket}/{key}", []).append(Fault(kind, **kwargs))

    def clear_faults(self) -> None:
        with self.injector.lock:
            self.injector.faults.clear()
            self.injector.gets.clear()
            self.injector.starts.clear()
            self.injector.max_in_flight = 0

    def get_count(self, bucket: str, key: str) -> int:
        return self.injector.gets.get(f"/{bucket}/{key}", 0)

    @property
    def max_in_flight(self) -> int:
        return self.injector.max_in_flight
