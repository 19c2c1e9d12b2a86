"""A tiny HTTP server on 127.0.0.1 for tests that run real client libraries offline.

The server listens on an ephemeral port, answers routes keyed by method and path (the query
string is not part of the key), records every request it receives, and can inject faults into
the k-th request of a route: answer with a status code, drop the connection without answering,
or wait before answering (to trip a client's timeout).

    with LoopbackServer() as srv:
        srv.route("GET", "/v2/stocks/bars", {"bars": {}, "next_page_token": None})
        srv.route("GET", "/api/v3/klines", lambda req: rows_after(req.param("startTime")))
        srv.fail("GET", "/v2/stocks/bars", on=1, status=500)     # first request -> 500
        srv.fail("GET", "/v2/stocks/bars", on=2, drop=True)      # second -> connection closed
        client = SomeClient(base_url=srv.base_url)
        ...
        assert srv.requests_to("GET", "/v2/stocks/bars")[0].param("symbols") == "AAPL"

An answer is a :class:`Reply`, a callable taking the :class:`Request` and returning a ``Reply``
or a body, or a body: ``bytes``/``str`` are sent as they are, anything else as JSON. A request to
a path with no route gets a 404 with a JSON body naming the route, and is recorded too. When an
answer callable raises, the client gets a 500 naming the exception and the exception is kept in
``server.errors`` (assert it is empty at teardown, so a broken handler cannot pass as a fault).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

__all__ = ["Fault", "LoopbackServer", "Reply", "Request"]


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received_at: float = 0.0  # time.monotonic() on arrival

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``, or ``default``."""
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """What the server sends back: status, body (bytes/str as is, else JSON) and headers."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    """A fault for one request of a route: a status, a dropped connection, or a delay first."""

    status: int | None = None
    body: Any = None
    drop: bool = False
    delay: float = 0.0


Answer = Reply | Callable[[Request], Any] | Any


def _encode(body: Any) -> tuple[bytes, str]:
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body).encode(), "application/json"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Loopback/1"

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _read_request(self) -> Request:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        return Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k: v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
            received_at=time.monotonic(),
        )

    def _serve(self) -> None:
        app = cast(_Server, self.server).app
        request = self._read_request()
        reply, fault = app._dispatch(request)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.drop:
            self.close_connection = True  # no bytes at all: the client sees a dropped connection
            return
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        payload, content_type = _encode(reply.body)
        try:
            self.send_response(reply.status)
            headers = {"Content-Type": content_type, **reply.headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: LoopbackServer


class LoopbackServer:
    """A threaded HTTP server on ``127.0.0.1:<ephemeral port>`` with routes, recording, faults."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str], Answer] = {}
        self._faults: dict[tuple[str, str, int], Fault] = {}
        self._hits: dict[tuple[str, str], int] = {}
        self._requests: list[Request] = []
        self.errors: list[BaseException] = []  # exceptions raised by answer callables
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LoopbackServer:
        """Start serving in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def route(self, method: str, path: str, answer: Answer) -> None:
        """Answer ``method path`` with ``answer`` (a Reply, a callable, or a body)."""
        with self._lock:
            self._routes[(method.upper(), path)] = answer

    def fail(
        self,
        method: str,
        path: str,
        *,
        on: int | Iterable[int] = 1,
        status: int | None = None,
        body: Any = None,
        drop: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Inject a fault into the ``on``-th request(s) of a route (counting from 1).

        ``status`` answers with that code (and ``body``, default a JSON error); ``drop`` closes the
        connection without a byte; ``delay`` waits that many seconds first (then answers normally
        unless ``status`` or ``drop`` is also given).
        """
        if status is None and not drop and not delay:
            raise ValueError("fail() needs status=, drop=True or delay=")
        ks = [on] if isinstance(on, int) else list(on)
        fault = Fault(status=status, body=body, drop=drop, delay=delay)
        with self._lock:
            for k in ks:
                if k < 1:
                    raise ValueError(f"on= counts requests from 1, got {k}")
                self._faults[(method.upper(), path, k)] = fault

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str) -> list[Request]:
        """The requests received for one route, in arrival order."""
        key = (method.upper(), path)
        return [r for r in self.requests if (r.method, r.path) == key]

    def hits(self, method: str, path: str) -> int:
        """How many requests a route has received."""
        with self._lock:
            return self._hits.get((method.upper(), path), 0)

    def _dispatch(self, request: Request) -> tuple[Reply, Fault | None]:
        key = (request.method, request.path)
        with self._lock:
            self._requests.append(request)
            count = self._hits.get(key, 0) + 1
            self._hits[key] = count
            fault = self._faults.get((*key, count))
            answer = self._routes.get(key)
        if fault is not None and fault.status is not None:
            body = fault.body if fault.body is not None else {"message": f"injected {fault.status}"}
            return Reply(status=fault.status, body=body), fault
        if answer is None:
            return Reply(404, {"message": f"no route for {request.method} {request.path}"}), fault
        try:
            return _resolve(answer, request), fault
        except Exception as err:  # a broken test handler: say so instead of dropping the socket
            with self._lock:
                self.errors.append(err)
            return Reply(500, {"message": f"loopback handler raised {err!r}"}), fault


def _resolve(answer: Answer, request: Request) -> Reply:
    if isinstance(answer, Reply):
        return answer
    if callable(answer):
        result = answer(request)
        return result if isinstance(result, Reply) else Reply(body=result)
    return Reply(body=answer)
