"""``GET /metrics``: the service's Prometheus metrics, in a registry of its own (one per app).

* ``braintumor_http_requests_total``: requests by ``method``, ``route`` (the route's template; ``other`` for any
  unknown path, so fuzzed paths cannot grow the series) and ``status``;
* ``braintumor_http_request_duration_seconds``: latency histogram by ``route``;
* ``braintumor_rejections_total``: refused requests by ``reason`` (:data:`REASONS`: ``unauthorized`` 401,
  ``too_large`` 413, ``unsupported_type`` 415, ``invalid`` 422, ``rate_limited`` 429, ``busy`` 503, ``timeout``
  408/504...);
* ``braintumor_inflight_requests``: requests being handled now;
* ``braintumor_decode_slots_busy``: decoding + inference slots in use (``--max-concurrent``);
* ``braintumor_model_info``: the model in use (``name``, ``version``, ``fingerprint``, ``backend``).

Needs ``prometheus-client`` (the ``serve`` extra); without it ``/metrics`` answers 404 with a one-line reason.

Example:
    >>> from braintumor.serve.metrics import ServiceMetrics
    >>> m = ServiceMetrics({"name": "cnn", "version": "demo", "fingerprint": "ab12", "backend": "onnxruntime"})
    >>> m.observe("POST", "/v1/predict", 413, 0.004)
    >>> text = m.render()[0].decode()
    >>> 'braintumor_rejections_total{reason="too_large"} 1.0' in text
    True
"""

from __future__ import annotations

#: Rejection reason of each refused status (the ``reason`` label of ``braintumor_rejections_total``).
REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
           408: "timeout", 413: "too_large", 415: "unsupported_type", 422: "invalid", 429: "rate_limited",
           499: "client_closed", 503: "busy", 504: "timeout"}
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """The counters, histogram and gauges of one app (``available`` is False without ``prometheus-client``).

    Args:
        model: the model's ``name``, ``version``, ``fingerprint`` and ``backend`` (the info metric).
    """

    def __init__(self, model: dict):
        try:
            import prometheus_client as pc
        except ImportError:
            self.available = False
            return
        self.available = True
        self._pc = pc
        self.registry = pc.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = pc.Counter("braintumor_http_requests", "HTTP requests handled",
                                   ["method", "route", "status"], registry=r)
        self.latency = pc.Histogram("braintumor_http_request_duration_seconds", "Time to answer a request",
                                    ["route"], buckets=BUCKETS, registry=r)
        self.rejections = pc.Counter("braintumor_rejections", "Requests refused, by reason", ["reason"], registry=r)
        self.inflight = pc.Gauge("braintumor_inflight_requests", "Requests being handled", registry=r)
        self.decoding = pc.Gauge("braintumor_decode_slots_busy", "Decoding + inference slots in use", registry=r)
        info = pc.Info("braintumor_model", "The model in use", registry=r)
        info.info({k: str(model.get(k) or "") for k in ("name", "version", "fingerprint", "backend")})

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (a 4xx/5xx also counts as a rejection by reason)."""
        if not self.available:
            return
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(max(0.0, seconds))
        if status >= 400:
            self.rejections.labels(reason=REASONS.get(status, f"http_{status}")).inc()

    def add(self, gauge: str, delta: int) -> None:
        """Move gauge ``"inflight"`` or ``"decoding"`` by ``delta``."""
        if self.available:
            getattr(self, gauge).inc(delta)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format and its content type."""
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
