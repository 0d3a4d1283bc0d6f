"""Running the app under uvicorn with read timeouts: slow-header (slowloris) clients and slow uploads are cut off.

uvicorn's h11 protocol has only a keep-alive timeout: a connection that never finishes its request line and headers,
or trickles a body, stays open for ever. :func:`timeout_protocol` makes a subclass of uvicorn's ``H11Protocol`` that

* gives a request ``header_timeout`` seconds from its first byte (or from the connection's opening) to finish its
  request line and headers, else answers ``408 Request Timeout`` and closes the connection;
* gives its body ``body_timeout`` seconds from the end of the headers to arrive in full, else closes the connection
  (the app sees the client as gone; ``POST /v1/predict`` answers 408 a little earlier by itself).

:func:`server_config` builds the ``uvicorn.Config`` with it, ``limit_concurrency`` (open connections + requests;
503 beyond it), ``timeout_keep_alive`` and, with ``log_format="json"``, JSON logs
(:func:`~braintumor.serve.controls.json_log_config`). ``braintumor serve`` runs exactly this.

Example:
    >>> import uvicorn
    >>> from braintumor.serve import create_app
    >>> from braintumor.serve.server import server_config
    >>> config = server_config(create_app("runs/demo"), port=8000, header_timeout=10)  # doctest: +SKIP
    >>> uvicorn.Server(config).run()                                                     # doctest: +SKIP
"""

from __future__ import annotations

import logging

#: Seconds a client has to send its request line and headers.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds a client has to send a request body, from the end of its headers.
DEFAULT_BODY_TIMEOUT = 60.0
#: Open connections (and requests in progress) beyond which uvicorn answers 503.
DEFAULT_MAX_CONNECTIONS = 1000
#: Seconds an idle keep-alive connection stays open.
DEFAULT_KEEP_ALIVE = 5

_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: 46\r\n\r\nrequest line and headers not received in time\n")

log = logging.getLogger("braintumor.serve")


def timeout_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT):
    """A uvicorn ``H11Protocol`` subclass with a header deadline and a body deadline (pass it as ``http=``).

    Example:
        >>> from braintumor.serve.server import timeout_protocol
        >>> proto = timeout_protocol(header_timeout=5, body_timeout=30)
        >>> proto.__name__, proto.header_timeout, proto.body_timeout
        ('TimeoutH11Protocol', 5.0, 30.0)
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if not header_timeout > 0 or not body_timeout > 0:
        raise ValueError(f"timeouts must be positive, not header={header_timeout}, body={body_timeout}")

    class TimeoutH11Protocol(H11Protocol):
        """uvicorn's h11 protocol plus deadlines for the headers and the body of each request."""

        def connection_made(self, transport):
            self._read_timer = None
            self._read_phase = None
            super().connection_made(transport)
            self._arm("headers")

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # Bytes of a new request (after a keep-alive pause): the headers' clock starts now.
            if self._read_phase is None and (self.cycle is None or self.cycle.response_complete):
                self._arm("headers")
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._follow(idle_ok=True)

        # ------------------------------------------------------------------------------------------------------

        def _follow(self, idle_ok: bool = False) -> None:
            """Move the deadline along with h11's view of the request being read."""
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                if self._read_phase != "body":
                    self._arm("body")
            elif state is h11.IDLE:
                if idle_ok:  # between requests: uvicorn's keep-alive timeout takes over
                    self._disarm()
            else:  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more to read for this request
                self._disarm()

        def _arm(self, phase: str) -> None:
            self._disarm()
            delay = self.header_timeout if phase == "headers" else self.body_timeout
            self._read_phase = phase
            self._read_timer = self.loop.call_later(delay, self._expired, phase)

        def _disarm(self) -> None:
            timer = getattr(self, "_read_timer", None)
            if timer is not None:
                timer.cancel()
            self._read_timer = None
            self._read_phase = None

        def _expired(self, phase: str) -> None:
            self._read_timer = None
            self._read_phase = None
            if self.transport.is_closing():
                return
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
            if phase == "headers" and (self.cycle is None or self.cycle.response_complete):
                log.info("%s: request headers not complete after %g s; connection closed", client,
                         self.header_timeout)
                self.transport.write(_TIMEOUT_408)
            else:
                log.info("%s: request body not complete after %g s; connection closed", client, self.body_timeout)
            self.transport.close()

    TimeoutH11Protocol.header_timeout = float(header_timeout)
    TimeoutH11Protocol.body_timeout = float(body_timeout)
    return TimeoutH11Protocol


def server_config(app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
                  log_format: str = "text", header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                  body_timeout: float = DEFAULT_BODY_TIMEOUT, max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
                  keep_alive: int = DEFAULT_KEEP_ALIVE):
    """The ``uvicorn.Config`` that ``braintumor serve`` runs ``app`` with (see the module's description).

    Args:
        app: the ASGI app (:func:`~braintumor.serve.create_app`).
        host, port: where to listen.
        log_level: uvicorn's log level.
        log_format: ``text`` (uvicorn's logs) or ``json`` (every line JSON; the access log from the app's own
            middleware, which ``create_app(..., access_log=True)`` turns on).
        header_timeout, body_timeout: the read deadlines of :func:`timeout_protocol` (seconds).
        max_connections: uvicorn's ``limit_concurrency`` (``None``: no limit).
        keep_alive: seconds an idle keep-alive connection stays open.
    """
    import uvicorn

    from .controls import json_log_config

    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be text or json, not {log_format!r}")
    kwargs = {}
    if log_format == "json":
        kwargs.update(log_config=json_log_config(log_level), access_log=False)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=timeout_protocol(header_timeout, body_timeout), limit_concurrency=max_connections,
                          timeout_keep_alive=keep_alive, server_header=False, **kwargs)
