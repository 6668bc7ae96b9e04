"""The HTTP server under the app: uvicorn, plus the deadlines and the connection cap it lacks.

uvicorn 0.54 closes idle keep-alive connections (``timeout_keep_alive``) but has no
deadline for a request's headers or body, and its ``limit_concurrency`` answers 503
only once a request's headers are complete: a client that connects and then sends
nothing, or trickles its headers or body, holds a socket for ever. The protocol here
adds three rules, each answered with a JSON error naming what was late, then a close:

* headers: a request's headers are complete within ``header_timeout_s`` of the
  connection opening (first request) or of the request's first byte (later ones): 408;
* body: the whole body arrives within ``body_timeout_s`` of the headers: 408;
* cap: at most ``max_connections`` open connections per worker; the next one is
  answered 503 and closed at once, so a flood cannot pile up sockets.

This module imports no torch and no model code: ``relist serve --workers N`` execs into
it (:func:`supervise_workers`), so the parent process of the workers stays small.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

log = logging.getLogger(__name__)

# After a final error answer the server stops writing and reads (and drops) what the client still sends for
# this long before it closes: closing with unread input would reset the connection and lose the answer.
LINGER_S = 1.0


class ServerConfig(uvicorn.Config):
    """A uvicorn config carrying relist's limits to every worker (it is pickled to spawned workers)."""

    def __init__(self, app: Any, *, header_timeout_s: float, body_timeout_s: float, max_connections: int,
                 **kwargs: Any):
        super().__init__(app, http=GuardedHttpToolsProtocol, **kwargs)
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self.max_connections = max_connections


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body deadlines and a connection cap (see the module)."""

    def __init__(self, config: ServerConfig, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s: float | None = getattr(config, "header_timeout_s", None)
        self.body_timeout_s: float | None = getattr(config, "body_timeout_s", None)
        self.max_connections: int | None = getattr(config, "max_connections", None)
        self._deadline: asyncio.TimerHandle | None = None
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._reply_and_close(503, "connection", "too_many_connections",
                                  f"the server holds its cap of {self.max_connections} open connections; retry "
                                  "later", retry_after=True)
            return
        self._arm(self.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._lingering:  # after the final answer, input is read and dropped
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection: timed from its first byte
            self._arm(self.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(self.body_timeout_s, self._body_late)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float | None, callback) -> None:
        self._disarm()
        if seconds is not None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.cycle is not None and not self.cycle.response_complete:  # a pipelined request is in flight
            self.transport.close()
            return
        log.debug("closing a connection from %s: headers not complete in %g s", self.client, self.header_timeout_s)
        self._reply_and_close(408, "headers", "timeout",
                              f"request headers not received within {self.header_timeout_s:g} s")

    def _body_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        log.debug("closing a connection from %s: body not complete in %g s", self.client, self.body_timeout_s)
        if cycle is None or cycle.response_started:  # answered already (e.g. 413 before the body was read)
            self.transport.close()
            return
        cycle.disconnected = True  # the app's next receive() is a disconnect and what it sends is dropped
        cycle.message_event.set()
        self._reply_and_close(408, "body", "timeout",
                              f"request body not received within {self.body_timeout_s:g} s of its headers")

    def _reply_and_close(self, status: int, field: str, kind: str, msg: str, retry_after: bool = False) -> None:
        """A complete JSON error response in the service's error shape, then a lingering close."""
        body = json.dumps({"detail": [{"loc": [field], "field": field, "msg": msg, "type": kind}]}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"retry-after: 1\r\n" if retry_after else b"", b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self._disarm()
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_S, self.transport.close)


LIMITS = ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s", "max_connections")


def limits_of(config: Any) -> dict[str, Any]:
    """The connection limits of a relist.serve.config.ServeConfig, as :func:`server_config` keywords."""
    return {name: getattr(config, name) for name in LIMITS}


def server_config(app: Any, *, host: str, port: int, workers: int, header_timeout_s: float,
                  body_timeout_s: float, keep_alive_timeout_s: float, max_connections: int,
                  factory: bool = False, log_level: str = "info") -> ServerConfig:
    """The uvicorn config ``relist serve`` runs (tests build theirs here too); uvicorn's own access log is
    off: the app writes sampled JSON access lines instead (``ServeConfig.access_log_sample``)."""
    return ServerConfig(app, host=host, port=port, workers=workers, factory=factory, log_level=log_level,
                        access_log=False, timeout_keep_alive=keep_alive_timeout_s,  # type: ignore[arg-type]
                        header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
                        max_connections=max_connections)


class BackgroundServer:
    """The app under this module's uvicorn on ``host`` and a free port, in a thread of this process: for tests,
    benchmarks and notebooks (``relist serve`` is the production entry point). ``limits``: see
    :func:`limits_of`; None serves with uvicorn's stock protocol (the baseline the limits are measured
    against)."""

    def __init__(self, app: Any, limits: dict[str, Any] | None, host: str = "127.0.0.1",
                 log_level: str = "warning", start_timeout_s: float = 60.0):
        with socket.socket() as s:
            s.bind((host, 0))
            self.host, self.port = host, s.getsockname()[1]
        if limits is None:
            config = uvicorn.Config(app, host=host, port=self.port, http="httptools", log_level=log_level,
                                    access_log=False)
        else:
            config = server_config(app, host=host, port=self.port, workers=1, log_level=log_level, **limits)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.start_timeout_s = start_timeout_s

    @property
    def connections(self) -> int:
        """Connections the server holds open now."""
        return len(self.server.server_state.connections)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(self.start_timeout_s)


def run(config: ServerConfig) -> None:
    """Serve until stopped: in this process, or in ``config.workers`` spawned worker processes."""
    server = uvicorn.Server(config)
    if config.workers > 1:
        if not isinstance(config.app, str):
            raise ValueError("workers > 1 need the app as an import string (each worker builds its own)")
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
        if not server.started:  # e.g. the port is taken: uvicorn logged why
            sys.exit(STARTUP_FAILURE)


def supervise_workers(settings: dict[str, Any]) -> None:
    """Replace this process with a lean supervisor of ``settings["workers"]`` workers (``settings``: the keyword
    arguments of :func:`server_config`, app as an import string). Whatever this process loaded (torch, the
    model it checked) is gone after the exec: only the workers hold a model."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", __name__, json.dumps(settings)], dict(os.environ))


def main(argv: list[str] | None = None) -> None:
    """``python -m relist.serve.http_server SETTINGS_JSON``: the supervisor that :func:`supervise_workers` runs."""
    settings = json.loads((argv or sys.argv[1:])[0])
    run(server_config(settings.pop("app"), **settings))


if __name__ == "__main__":
    main()
