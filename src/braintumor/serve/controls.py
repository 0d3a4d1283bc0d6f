"""Service controls around the API: API keys, rate limit, metrics, JSON access logs, and the decoding gate.

* :class:`ServiceControls` is a plain ASGI middleware in front of the app: ``/v1/*`` requests without a valid key
  get a 401, clients over the rate limit a 429 with ``Retry-After`` (both one-line JSON ``{"detail": ...}``); every
  request is counted in :class:`~braintumor.serve.metrics.ServiceMetrics` and, with ``access_log=True``, logged
  as one JSON line (:func:`access_record`: time, client, method, path, status, duration, bytes, model; never the
  image, the query string or the key).
* :class:`DecodeGate` runs decoding + inference in worker threads, at most ``slots`` at a time: a request waits up
  to ``queue_timeout`` seconds for a slot (then 503 with ``Retry-After``), and is answered within
  ``request_timeout`` seconds (then 504; the abandoned work keeps its slot until it ends, so memory stays bounded
  by ``slots`` x the per-image pixel cap).

Example:
    >>> import asyncio
    >>> from braintumor.serve.controls import DecodeGate
    >>> gate = DecodeGate(slots=2, queue_timeout=1.0, request_timeout=5.0)
    >>> asyncio.run(gate.run(sum, [1, 2, 3]))
    6
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from datetime import datetime, timezone

from .metrics import ServiceMetrics
from .security import RateLimiter, client_id, key_matches, presented_key, retry_after

ACCESS_LOGGER = "braintumor.access"
#: Paths reported as themselves in metrics and logs (anything else is ``other``: fuzzed paths stay bounded).
KNOWN_ROUTES = frozenset({"/v1/predict", "/v1/model", "/healthz", "/metrics", "/", "/docs", "/openapi.json",
                          "/favicon.ico"})
PROTECTED_PREFIX = "/v1/"


class Rejected(Exception):
    """A request refused with ``status``, a one-line ``message`` and extra response ``headers``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(message)


def access_record(scope: dict, status: int, seconds: float, bytes_in: int, bytes_out: int, model: dict,
                  client: str | None = None) -> dict:
    """One access-log entry (a dict, logged as one JSON line): no image content, no query string, no key.

    Example:
        >>> from braintumor.serve.controls import access_record
        >>> scope = {"method": "POST", "path": "/v1/predict", "client": ("10.1.2.3", 5123)}
        >>> rec = access_record(scope, 200, 0.0123, 4096, 310, {"version": "demo", "fingerprint": "ab12"})
        >>> rec["status"], rec["duration_ms"], rec["client"], rec["model"]
        (200, 12.3, '10.1.2.3', 'demo@ab12')
    """
    peer = scope.get("client")
    path = str(scope.get("path", ""))
    return {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "client": peer[0] if peer else None, "method": scope.get("method"),
            "path": path if len(path) <= 200 else path[:200] + "...", "status": int(status),
            "duration_ms": round(seconds * 1000, 1), "bytes_in": int(bytes_in), "bytes_out": int(bytes_out),
            "model": f"{model.get('version') or model.get('name')}@{model.get('fingerprint')}",
            **({"api_client": client} if client else {})}


class JsonLogFormatter(logging.Formatter):
    """Every log record as one JSON line: access records (a dict message) as they are, others as
    ``{"time", "level", "logger", "message"}``.

    Example:
        >>> import logging
        >>> from braintumor.serve.controls import JsonLogFormatter
        >>> rec = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started %s", ("server",), None)
        >>> JsonLogFormatter().format(rec).endswith('"level": "info", "logger": "uvicorn.error", '
        ...                                           '"message": "Started server"}')
        True
    """

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict):
            return json.dumps(record.msg, ensure_ascii=True, default=str)
        when = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        out = {"time": when.replace("+00:00", "Z"), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:  # one line still: the exception's type and message, no traceback
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(out, ensure_ascii=True, default=str)


def json_log_config(level: str = "info") -> dict:
    """A :func:`logging.config.dictConfig` (uvicorn's ``log_config``) writing every log line as JSON: the access
    log (:data:`ACCESS_LOGGER`) to stdout, uvicorn's and the service's messages to stderr; uvicorn's own access
    log off."""
    fmt = {"()": f"{__name__}.JsonLogFormatter"}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": fmt},
            "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
                         "err": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
            "loggers": {"uvicorn": {"handlers": ["err"], "level": level.upper(), "propagate": False},
                        "uvicorn.error": {"level": level.upper()},
                        "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
                        "braintumor": {"handlers": ["err"], "level": level.upper(), "propagate": False},
                        ACCESS_LOGGER: {"handlers": ["out"], "level": "INFO", "propagate": False}}}


class ServiceControls:
    """ASGI middleware: API keys and rate limit on ``/v1/*``, metrics and access log on every request.

    Args:
        app: the ASGI app behind it.
        keys: the accepted API keys (empty: none required).
        limiter: the per-client :class:`~braintumor.serve.security.RateLimiter`, or ``None``.
        metrics: where requests are counted (``None``: not counted).
        model: ``{name, version, fingerprint}`` for the access log.
        access_log: log one JSON line per request on the ``braintumor.access`` logger.
    """

    def __init__(self, app, keys: list[str] | tuple[str, ...] = (), limiter: RateLimiter | None = None,
                 metrics: ServiceMetrics | None = None, model: dict | None = None, access_log: bool = False):
        self.app = app
        self.keys = list(keys)
        self.limiter = limiter
        self.metrics = metrics
        self.model = dict(model or {})
        self.access_log = bool(access_log)
        self.logger = logging.getLogger(ACCESS_LOGGER)

    def _check(self, scope: dict) -> tuple[Rejected | None, str | None]:
        """Refusal of a ``/v1/*`` request (or ``None``) and the rate limit's client id when it is a key."""
        if not str(scope.get("path", "")).startswith(PROTECTED_PREFIX) or scope.get("method") == "OPTIONS":
            return None, None
        headers = {}
        for k, v in scope.get("headers") or ():
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        key = presented_key(headers) if self.keys else None
        ok = key_matches(key, self.keys) if self.keys else True
        who = client_id(key, None) if self.keys and ok else None
        if self.limiter is not None:
            peer = scope.get("client")
            wait = self.limiter.hit(who or client_id(None, peer[0] if peer else None))
            if wait > 0:
                return Rejected(429, f"rate limit exceeded ({self.limiter.rate} requests per "
                                     f"{self.limiter.period:g} s per client): retry in {retry_after(wait)} s",
                                {"Retry-After": retry_after(wait)}), who
        if not ok:
            why = "no API key given" if key is None else "the API key is not valid"
            return Rejected(401, f"{why}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                            {"WWW-Authenticate": 'Bearer realm="braintumor"'}), None
        return None, who

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"status": None, "out": 0, "in": 0}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["out"] += len(message.get("body") or b"")
            await send(message)

        async def counting_receive():
            message = await receive()
            if message.get("type") == "http.request":
                state["in"] += len(message.get("body") or b"")
            return message

        if self.metrics is not None:
            self.metrics.add("inflight", 1)
        try:
            refusal, who = self._check(scope)
            if refusal is not None:
                await _reply(counting_send, refusal)
            else:
                await self.app(scope, counting_receive, counting_send)
        except BaseException:
            if state["status"] is None:
                state["status"] = 500
            raise
        finally:
            status = state["status"] or 499  # nothing sent: the client went away
            seconds = time.perf_counter() - t0
            if self.metrics is not None:
                self.metrics.add("inflight", -1)
                route = getattr(scope.get("route"), "path", None)
                path = str(scope.get("path", ""))
                route = route if route in KNOWN_ROUTES else (path if path in KNOWN_ROUTES else "other")
                self.metrics.observe(str(scope.get("method", "?"))[:10], route, status, seconds)
            if self.access_log:
                self.logger.info(access_record(scope, status, seconds, state["in"], state["out"], self.model, who))


async def _reply(send, refusal: Rejected) -> None:
    body = json.dumps({"detail": refusal.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-content-type-options", b"nosniff")]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in refusal.headers.items()]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class DecodeGate:
    """At most ``slots`` decodings + inferences at once, each answered within ``request_timeout`` seconds.

    Args:
        slots: concurrent jobs (>= 1); memory in use is bounded by ``slots`` x one image at the pixel cap.
        queue_timeout: longest wait for a free slot (seconds); then :class:`Rejected` 503 with ``Retry-After``.
        request_timeout: longest wait for a job's result, queueing included; then :class:`Rejected` 504 (the
            thread finishes on its own and only then frees its slot).
        metrics: where the busy slots are reported (gauge ``braintumor_decode_slots_busy``).
    """

    def __init__(self, slots: int = 2, queue_timeout: float = 10.0, request_timeout: float = 30.0,
                 metrics: ServiceMetrics | None = None):
        import threading

        if int(slots) < 1 or not queue_timeout > 0 or not request_timeout > 0:
            raise ValueError(f"DecodeGate needs slots >= 1 and positive timeouts, not slots={slots}, "
                             f"queue_timeout={queue_timeout}, request_timeout={request_timeout}")
        self.slots = int(slots)
        self.queue_timeout = float(queue_timeout)
        self.request_timeout = float(request_timeout)
        self.metrics = metrics
        self._sem = threading.BoundedSemaphore(self.slots)
        self._busy = 0
        self._count_lock = threading.Lock()
        self._pool = None

    @property
    def busy(self) -> int:
        """Slots in use now."""
        return self._busy

    def _moved(self, delta: int) -> None:
        with self._count_lock:
            self._busy += delta
        if self.metrics is not None:
            self.metrics.add("decoding", delta)

    async def run(self, fn, *args):
        """``fn(*args)`` in a worker thread once a slot is free; its result, or :class:`Rejected` 503/504."""
        t0 = time.monotonic()
        wait_until = t0 + min(self.queue_timeout, self.request_timeout)
        delay = 0.002
        while not self._sem.acquire(blocking=False):  # polling: works on any event loop, never blocks one
            if time.monotonic() >= wait_until:
                raise Rejected(503, f"server busy: {self.slots} images are being processed and the queue waited "
                                    f"{self.queue_timeout:g} s; retry later", {"Retry-After": "2"})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._moved(1)

        def job():
            try:
                return fn(*args)
            finally:
                self._sem.release()
                self._moved(-1)

        # Submitted at once to a pool of `slots` threads: the job always runs and frees its slot, even when the
        # request stops waiting for it (a timeout, a client gone).
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor(), contextvars.copy_context().run, job)
        left = self.request_timeout - (time.monotonic() - t0)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(left, 0.001))
        except asyncio.TimeoutError:
            future.add_done_callback(_drop_result)
            raise Rejected(504, f"processing the image took longer than the server's limit of "
                                f"{self.request_timeout:g} s") from None
        except asyncio.CancelledError:
            future.add_done_callback(_drop_result)
            raise

    def _executor(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            with self._count_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="braintumor-decode")
        return self._pool


def _drop_result(future) -> None:
    """Retrieve an abandoned job's outcome, so asyncio does not log 'exception was never retrieved'."""
    if not future.cancelled():
        future.exception()
