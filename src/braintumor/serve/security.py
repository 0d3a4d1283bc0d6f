"""Who may call the service and how often: API keys (constant-time check) and a per-client rate limit.

* :func:`api_keys_from` gathers the keys of ``--api-key`` and ``BRAINTUMOR_API_KEYS`` (comma-separated); with at
  least one key every ``/v1/*`` request needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``
  (:func:`presented_key`, :func:`key_matches`: every key is compared with :func:`hmac.compare_digest`, no early
  exit).
* :class:`RateLimiter` is a token bucket per client (the API key when one is presented, else the client address):
  ``"60/minute"`` allows bursts of 60 and 60 requests a minute on average; past it a request gets a 429 with
  ``Retry-After`` (:meth:`RateLimiter.hit`).

Example:
    >>> from braintumor.serve.security import RateLimiter, api_keys_from, key_matches
    >>> keys = api_keys_from(["s3cret-key-1"], env={"BRAINTUMOR_API_KEYS": "other-key-22, s3cret-key-1"})
    >>> keys
    ['s3cret-key-1', 'other-key-22']
    >>> key_matches("other-key-22", keys), key_matches("guess", keys)
    (True, False)
    >>> limiter = RateLimiter.parse("2/minute")
    >>> [limiter.hit("10.0.0.7", now=0.0) for _ in range(3)]
    [0.0, 0.0, 30.0]
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping

from ..errors import UsageError

#: Environment variable holding comma-separated API keys (added to ``--api-key``).
API_KEYS_ENV = "BRAINTUMOR_API_KEYS"
#: Shortest key accepted: a guessable key protects nothing.
MIN_KEY_LENGTH = 8
PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: it travels in an HTTP header


def api_keys_from(keys: Iterable[str] | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """The service's API keys: ``keys`` (``--api-key``, repeatable) then ``$BRAINTUMOR_API_KEYS`` (comma-separated),
    without duplicates. An empty list means no key is required.

    Raises:
        UsageError: a key shorter than 8 characters or with spaces/non-ASCII characters (it names the source and
            the key's length, never the key).
    """
    env = os.environ if env is None else env
    found: list[tuple[str, str]] = [("--api-key", str(k)) for k in (keys or [])]
    found += [(f"${API_KEYS_ENV}", k) for k in str(env.get(API_KEYS_ENV, "")).split(",")]
    out: list[str] = []
    for source, key in found:
        key = key.strip()
        if not key and source != "--api-key":
            continue  # "a,,b" or a trailing comma in the variable
        if len(key) < MIN_KEY_LENGTH or not _KEY_CHARS.match(key):
            raise UsageError(f"{source}: an API key of {len(key)} characters is not allowed: use at least "
                             f"{MIN_KEY_LENGTH} printable ASCII characters without spaces "
                             f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if key not in out:
            out.append(key)
    return out


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (``None``: neither)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def key_matches(presented: str | None, keys: Iterable[str]) -> bool:
    """Whether ``presented`` is one of ``keys``: each key is compared in constant time and all are compared."""
    if presented is None:
        return False
    given = presented.encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode("utf-8"))
    return ok


def client_id(key: str | None, address: str | None) -> str:
    """The rate limit's client: a digest of the API key when one is presented (never the key), else the address."""
    if key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return "ip:" + (address or "unknown")


class RateLimiter:
    """A token bucket per client: ``rate`` requests per ``period`` seconds on average, bursts of up to ``rate``.

    Thread-safe; at most ``max_clients`` buckets are kept (full, i.e. idle, buckets are dropped first).

    Args:
        rate: requests allowed per period (>= 1).
        period: the period in seconds.
        max_clients: buckets kept in memory.

    Example:
        >>> from braintumor.serve.security import RateLimiter
        >>> limiter = RateLimiter(1, 10.0)
        >>> limiter.hit("a", now=0.0), limiter.hit("a", now=5.0), limiter.hit("b", now=5.0)
        (0.0, 5.0, 0.0)
    """

    def __init__(self, rate: int, period: float, max_clients: int = 100_000):
        if rate < 1 or not period > 0:
            raise UsageError(f"rate limit: {rate} requests per {period} s is not allowed: need >= 1 request per a "
                             f"positive period")
        self.rate = int(rate)
        self.period = float(period)
        self.max_clients = int(max_clients)
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, time of last update)
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str) -> RateLimiter:
        """``"60/minute"``, ``"5/second"``, ``"1000/hour"``, ``"10000/day"`` (also ``min``, ``s``, ``h``, ``d``)."""
        m = re.fullmatch(r"\s*(\d{1,9})\s*/\s*([a-z]+)\s*", str(text).lower())
        aliases = {"s": "second", "sec": "second", "seconds": "second", "m": "minute", "min": "minute",
                   "minutes": "minute", "h": "hour", "hours": "hour", "d": "day", "days": "day"}
        unit = aliases.get(m.group(2), m.group(2)) if m else None
        if m is None or unit not in PERIODS or int(m.group(1)) < 1:
            raise UsageError(f"--rate-limit '{text}' is not allowed: use N/second, N/minute, N/hour or N/day with "
                             f"N >= 1 (e.g. 60/minute)")
        return cls(int(m.group(1)), PERIODS[unit])

    def describe(self) -> str:
        """``"60/minute"``: the limit as ``--rate-limit`` takes it."""
        unit = next((u for u, s in PERIODS.items() if s == self.period), None)
        return f"{self.rate}/{unit or f'{self.period:g}s'}"

    def __repr__(self) -> str:
        return f"RateLimiter({self.describe()})"

    def hit(self, client: str, now: float | None = None) -> float:
        """Count one request of ``client``: ``0.0`` when allowed, else the seconds to wait (``Retry-After``)."""
        now = time.monotonic() if now is None else now
        fill = self.rate / self.period
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + max(0.0, now - last) * fill)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                allowed = 0.0
            else:
                self._buckets[client] = (tokens, now)
                allowed = (1.0 - tokens) / fill
            if len(self._buckets) > self.max_clients:
                self._prune(now, fill)
        return allowed

    def _prune(self, now: float, fill: float) -> None:
        full = [c for c, (t, last) in self._buckets.items() if t + (now - last) * fill >= self.rate]
        for c in full:
            del self._buckets[c]
        while len(self._buckets) > self.max_clients:  # all busy: drop the oldest
            del self._buckets[next(iter(self._buckets))]


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
