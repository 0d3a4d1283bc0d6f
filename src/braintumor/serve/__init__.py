"""HTTP API and web page over one shared predictor: ``braintumor serve MODEL`` (FastAPI + uvicorn).

Example:
    >>> from braintumor.serve import create_app
    >>> app = create_app("runs/navoneel")           # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
    >>> from braintumor.serve.server import server_config           # with read timeouts, as `braintumor serve`
    >>> # uvicorn.Server(server_config(app, port=8000)).run()
"""

from __future__ import annotations

from .app import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, ModelService, create_app

__all__ = ["create_app", "ModelService", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_PIXELS"]
