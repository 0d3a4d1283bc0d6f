"""The FastAPI application: ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``, ``GET /`` (the page), ``/docs``.

* The model is loaded once (:class:`ModelService`) and shared by every request. Decoding, preprocessing and
  inference run in the thread pool, never on the event loop. A run folder is served by onnxruntime by default
  (``backend="auto"``: the run's cached ``model.onnx``, exported on demand; torch when onnxruntime is missing or
  the export fails): its session is thread-safe and runs requests concurrently. Grad-CAM (``explain=true``)
  needs the torch model, which is loaded next to it and guarded by a lock (Grad-CAM temporarily changes the
  model's hooks and gradient flags). With ``backend="torch"`` the torch model does both, behind the lock.
* A run trained with tumour masks also gives a tumour outline (``outline=true``: area in pixels and, for DICOM and
  NIfTI uploads, mm², bounding box and contour in the uploaded image's coordinates, see :mod:`braintumor.outline`),
  from the same model pass as the probabilities. ``GET /v1/model`` says whether the model has a tumour map
  (``tumour_map``); ``outline=true`` on a model without one is a 400.
* Every prediction says whether the input is trustworthy (the run's input check, :mod:`braintumor.ood`, from the
  same model pass): ``verdict`` (the class, ``not_brain_mri``, ``unfamiliar`` or ``uncertain``), ``in_distribution``,
  ``ood_score`` and ``ood_reasons``, beside ``label`` (the model's class, always given). A valid file is a 200
  whatever its verdict. For ``not_brain_mri`` and ``unfamiliar`` no heatmap overlay or outline is presented as an
  explanation (``overlay``/``outline`` null, ``overlay_withheld``/``outline_withheld`` say why). ``ood_check=false``
  (per request) or ``create_app(..., ood_check=False)`` turns the check off: every verdict is the class. Runs made
  before the check existed answer the same way (``in_distribution`` null; ``GET /v1/model`` ``input_check``).
* Bad input never gives a 500: an oversized upload is a 413 (checked on ``Content-Length`` and while streaming),
  an image whose header announces more than ``max_pixels`` pixels is a 413 before any pixel is decoded, a
  non-image is a 415, a corrupt/truncated/too small image or a missing ``file`` field is a 422.
* Service controls: decoding + inference run in at most ``max_concurrent`` slots (503 with ``Retry-After`` when
  none frees up within ``queue_timeout``, 504 past ``request_timeout``), uploads must arrive within
  ``body_timeout`` (408), volumes and compressed streams are capped from their headers (413, see
  :func:`service_limits`). ``api_keys`` (or ``$BRAINTUMOR_API_KEYS``) make every ``/v1/*`` request need a key
  (401), ``rate_limit`` limits each client (429), ``GET /metrics`` is in Prometheus format, ``access_log`` logs one
  JSON line per request, and ``cors_origins`` opens the API to other origins (off by default); see
  :mod:`braintumor.serve.controls`, :mod:`~braintumor.serve.security`, :mod:`~braintumor.serve.metrics`.
  Header and body read timeouts against slow clients live in the server (:mod:`braintumor.serve.server`).
* ``GET /v1/model`` also returns the model card (``model_card``, Markdown, :mod:`braintumor.model_card`): the run's
  ``model_card.md``, the card embedded in an ONNX file, or one generated for older runs and exports.
* The page (``GET /``) is one self-contained HTML file with inline CSS/JS: no CDN, no external asset (enforced by
  its Content-Security-Policy). ``/docs`` is an offline, server-rendered API reference built from the OpenAPI
  schema (FastAPI's Swagger UI would load its scripts from a CDN); the schema itself is at ``/openapi.json``.

How :func:`create_app` builds the app, one named piece each, in this order (defined below it):
:func:`_require_fastapi`, :func:`_settings` (the options checked, as :class:`AppSettings`), :func:`_load_service`
(the :class:`ModelService`), :func:`_add_error_handlers`, :func:`_add_predict_route` (``POST /v1/predict``, with
:func:`_read_body`, :func:`_image_bytes` and :func:`_answer_upload`), :func:`_add_model_routes` (``GET /v1/model``,
``/healthz``), :func:`_add_page_routes` (``/``, ``/docs``), :func:`_add_metrics_route` (``/metrics``) and
:func:`_add_middleware` (security headers, service controls, CORS).

Example:
    >>> from fastapi.testclient import TestClient
    >>> from braintumor.serve import create_app
    >>> client = TestClient(create_app("runs/demo"))                                  # doctest: +SKIP
    >>> client.post("/v1/predict", files={"file": open("scan.png", "rb")}).json()["label"]   # doctest: +SKIP
    'yes'
"""


import base64
import contextlib
import html
import io
import logging
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .. import __version__
from ..backends import BACKENDS, load_predictor
from ..errors import UnreadableImageError, UsageError
from ..inference import Assessment, Predictor
from ..ood import NOT_BRAIN, UNCERTAIN, UNFAMILIAR, VERDICT_TEXT, image_stats
from .controls import DecodeGate, Rejected, ServiceControls
from .metrics import ServiceMetrics
from .security import RateLimiter, api_keys_from

#: Largest accepted upload (bytes).
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest accepted image, in pixels, read from the header before decoding (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 40_000_000
#: Largest accepted volume (DICOM rows x columns x frames, NIfTI dimensions), read from the header.
DEFAULT_MAX_VOXELS = 40_000_000
#: Largest size a gzip/deflate stream of an upload (``.nii.gz``, deflated DICOM) may expand to.
DEFAULT_MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024
#: Seconds a client has to send the whole body of ``POST /v1/predict`` (from the start of reading it).
DEFAULT_BODY_TIMEOUT = 60.0
#: Seconds ``POST /v1/predict`` waits at most for a free decoding slot (then 503 with ``Retry-After``).
DEFAULT_QUEUE_TIMEOUT = 10.0
#: Seconds within which decoding + inference of one upload must be done, queueing included (then 504).
DEFAULT_REQUEST_TIMEOUT = 30.0
_log = logging.getLogger("braintumor.serve")
#: Room for the multipart envelope around the file.
_MULTIPART_SLACK = 64 * 1024
FIELD = "file"
NOTICE = "Research use only. Not a medical device: not for diagnosis or treatment decisions."

PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
#: Verdicts for which no heatmap overlay or tumour outline is given: there is no trustworthy class to explain.
WITHHOLD = (NOT_BRAIN, UNFAMILIAR)


def withheld_reason(verdict: str | None, what: str) -> str | None:
    """Why ``what`` (``"heatmap overlay"``, ``"tumour outline"``) is not given for ``verdict`` (``None``: it is)."""
    if verdict not in WITHHOLD:
        return None
    return f"no {what}: the input check's verdict is {verdict} ({VERDICT_TEXT[verdict]})"


class RejectedInput(Rejected):
    """A request the API refuses with a 4xx status (503/504 when busy), a one-line message and extra response
    ``headers`` (``Retry-After``...)."""


class ModelService:
    """One loaded predictor shared by all requests; thread-safe :meth:`predict` and :meth:`explain`.

    Args:
        predictor: a torch :class:`~braintumor.inference.Predictor` or an ``OnnxPredictor``.
        explainer: the torch predictor of the same run for Grad-CAM, when ``predictor`` is an ``OnnxPredictor``
            (default: ``predictor`` itself when it has a torch model).
        ood_check: apply the run's input check (``False``: every verdict is the class). The predictors are not
            changed; a request can also turn the check off for itself (``ood_check=False`` of :meth:`predict`).

    Example:
        >>> from braintumor.inference import load_predictor
        >>> from braintumor.serve import ModelService
        >>> service = ModelService(load_predictor("runs/demo"))          # doctest: +SKIP
        >>> service.predict(image)["label"]                             # doctest: +SKIP
        'yes'
    """

    def __init__(self, predictor: Predictor, explainer: Predictor | None = None, ood_check: bool = True):
        self.predictor = predictor
        self.ood_check = bool(ood_check)
        # Torch: one forward at a time (Grad-CAM patches the module). onnxruntime sessions are thread-safe.
        self._lock = threading.Lock() if predictor.backend == "torch" else contextlib.nullcontext()
        if explainer is None and getattr(predictor, "model", None) is not None:
            explainer = predictor
        self.explainer = explainer
        self._explain_lock = self._lock if explainer is predictor else threading.Lock()
        info = predictor.model_info()
        check = dict(info.get("input_check") or {"available": False, "enabled": False})
        check["enabled"] = bool(check.get("enabled")) and self.ood_check
        info["input_check"] = check
        self.model = {"name": info["name"], "version": info["version"], "fingerprint": info["fingerprint"]}
        self.info = info
        # The engine of outlines: the served predictor when it has the tumour-map output, else the torch model.
        self.mapper = next((m for m in (predictor, explainer) if m is not None and getattr(m, "has_tumour_map", False)),
                           None)
        self._map_lock = self._lock if self.mapper is predictor else self._explain_lock
        self._card: str | None = None
        self._card_lock = threading.Lock()

    def model_card(self) -> str:
        """The served model's card (Markdown), made once on first use: the run folder's ``model_card.md`` (or one
        generated for a run made before cards existed), else the card embedded in the ONNX file, else one generated
        from its metadata (:func:`braintumor.model_card.predictor_model_card`)."""
        with self._card_lock:
            if self._card is None:
                from ..model_card import NOTICE as CARD_NOTICE
                from ..model_card import md, predictor_model_card

                try:
                    self._card = predictor_model_card(self.predictor)
                except Exception as exc:  # noqa: BLE001 - GET /v1/model answers whatever a run folder holds
                    _log.warning("no model card for %s (%s: %s)", self.model.get("version"), type(exc).__name__, exc)
                    self._card = (f"# Model card: {md(self.model.get('name'))}\n\n> {CARD_NOTICE}\n\nThe full card "
                                  f"could not be made from this model's files ({type(exc).__name__}).\n")
            return self._card

    @property
    def has_tumour_map(self) -> bool:
        """Whether outlines are available (a run trained with tumour masks)."""
        return self.mapper is not None

    def _checking(self, predictor, ood_check: bool) -> bool:
        return (bool(ood_check) and self.ood_check and getattr(predictor, "input_check", None) is not None
                and bool(getattr(predictor, "check_inputs", True)))

    def _answer(self, predictor, image: np.ndarray, proba: np.ndarray, scores, check: bool) -> dict:
        """The response fields of one image: label, probabilities and the input check's verdict."""
        label = predictor.labels_from_proba(proba)[0]
        if check:
            a = predictor.assess(proba, [label], [image_stats(image)], scores)[0]
        else:
            a = Assessment(label, None, None)
        return {"label": label,
                "probabilities": {c: float(v) for c, v in zip(predictor.classes, proba[0], strict=True)},
                **a.to_dict()}

    def predict_outline(self, image: np.ndarray, spacing=None, threshold: float = 0.5, ood_check: bool = True
                        ) -> tuple[dict, dict | None, np.ndarray]:
        """:meth:`predict`'s result, the tumour outline (:func:`braintumor.outline.outline`, in ``image``'s
        coordinates; ``spacing``: ``(row, col)`` mm) and the prepared image ``(1, S, S, 3)``, from one model pass.

        The outline is ``None`` when the verdict is ``not_brain_mri`` or ``unfamiliar`` (:func:`withheld_reason`)."""
        from ..outline import NO_DECODER, outline, prepare_with_geometry

        m = self.mapper
        if m is None:
            raise RejectedInput(400, f"outline=true: {NO_DECODER}")
        prepared, geo = prepare_with_geometry(m.preprocessor, image)
        prepared = prepared[None]
        check = self._checking(m, ood_check)
        with self._map_lock:
            res = m.outputs_prepared(prepared, maps=True, scores=check)
        out = self._answer(m, image, res.proba, res.scores, check)
        if withheld_reason(out["verdict"], "tumour outline"):
            return out, None, prepared
        return out, outline(res.maps[0], geo, threshold=threshold, spacing=spacing), prepared

    @property
    def can_explain(self) -> bool:
        return self.explainer is not None

    def predict(self, image: np.ndarray, prepared: np.ndarray | None = None, ood_check: bool = True) -> dict:
        """Label, probabilities and the input check's ``verdict``, ``in_distribution``, ``ood_score`` and
        ``ood_reasons`` of one decoded ``(H, W, 3)`` ``uint8`` image (the model runs on its ``prepared``
        ``(1, S, S, 3)`` when given; the rules always look at ``image``), from one model pass.

        ``ood_check=False`` (or a service or run without the check): every verdict is the label,
        ``in_distribution`` is ``None``."""
        p = self.predictor
        if prepared is None:
            prepared = p.preprocessor.prepare(image)[None]
        check = self._checking(p, ood_check)
        with self._lock:
            res = p.outputs_prepared(prepared, scores=check)
        return self._answer(p, image, res.proba, res.scores, check)

    def _require_explainer(self):
        if not self.can_explain:
            raise RejectedInput(400, "explain=true needs the torch model of a run folder; this server serves an "
                                     "ONNX file (start it with the run folder to get heatmap overlays)")
        try:
            from ..explanation import core as module
        except ImportError as exc:  # pragma: no cover - the explain module ships with the package
            raise RejectedInput(501, f"Grad-CAM is not available in this installation ({exc})") from None
        return module

    @staticmethod
    def _overlay(ex) -> dict:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(ex.overlay()).save(buf, format="PNG")
        return {"method": ex.method, "target": ex.target or ex.label,
                "png_base64": base64.b64encode(buf.getvalue()).decode("ascii")}

    def explain(self, image: np.ndarray, prepared: np.ndarray | None = None, target: str | None = None) -> dict:
        """The heatmap (:data:`~braintumor.explanation.DEFAULT_METHOD`) of ``target`` (default: the predicted class)
        as a base64 PNG overlay (run folders only)."""
        module = self._require_explainer()
        if prepared is None:
            prepared = self.explainer.preprocessor.prepare(image)[None]
        with self._explain_lock:
            ex = module.explain_prepared(self.explainer, prepared, method=module.DEFAULT_METHOD, target=target,
                                         originals=[image])[0]
        return self._overlay(ex)

    def predict_explain(self, image: np.ndarray, prepared: np.ndarray | None = None, out: dict | None = None,
                        ood_check: bool = True) -> tuple[dict, dict | None]:
        """:meth:`predict` plus the heatmap overlay (:data:`~braintumor.explanation.DEFAULT_METHOD`) of the predicted
        label: the torch model runs only the heatmap passes (the probabilities are the prediction's; give
        ``prepared`` and ``out`` when they are known already).

        The overlay is ``None`` (no heatmap pass) when the verdict is ``not_brain_mri`` or ``unfamiliar``: a heat
        map of a class the model should not give would read as an explanation (:func:`withheld_reason`)."""
        module = self._require_explainer()
        if prepared is None:
            prepared = self.predictor.preprocessor.prepare(image)[None]
        if out is None:
            out = self.predict(image, prepared, ood_check)
        if withheld_reason(out.get("verdict"), "heatmap overlay"):
            return out, None
        label = out["label"]
        with self._explain_lock:
            cam = module.heatmaps(self.explainer, prepared, [self.explainer.classes.index(label)],
                                  module.DEFAULT_METHOD, originals=[image])
        ex = module.Explanation(heatmap=cam[0], image=prepared[0], label=label, probability=out["probabilities"][label],
                                probabilities=dict(out["probabilities"]), target=label, method=module.DEFAULT_METHOD)
        return out, self._overlay(ex)


def service_limits(max_pixels: int = DEFAULT_MAX_PIXELS, max_voxels: int = DEFAULT_MAX_VOXELS,
                   max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES):
    """The size caps uploads are decoded under: the service's own, never looser than the operator's
    (``BRAINTUMOR_MAX_*``, see :mod:`braintumor.data.limits`); ``None`` where that module is not there.

    Example:
        >>> from braintumor.serve.app import service_limits
        >>> service_limits(max_pixels=1_000_000).max_pixels
        1000000
    """
    try:
        from ..data.limits import Limits, current_limits
    except ImportError:  # pragma: no cover - the limits module ships with the package
        return None
    return current_limits().tighter(Limits(max_pixels=max_pixels, max_voxels=max_voxels,
                                           max_decompressed_bytes=max_decompressed_bytes))


def _too_large_error():
    from .. import errors

    return getattr(errors, "ImageTooLargeError", ())


def _status_for(reason: str, identified: bool) -> int:
    if "too large" in reason:
        return 413
    return 422 if identified else 415


def decode_upload(data: bytes, filename: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                  limits=None) -> np.ndarray:
    """Upload bytes -> ``(H, W, 3)`` ``uint8`` through the package's one reader (:func:`read_image`).

    The header is read first: more than ``max_pixels`` pixels (or, with ``limits``, a
    :class:`braintumor.data.limits.Limits`: pixels, voxels of a volume, decompressed bytes of a gzip/deflate
    stream) is refused before any pixel is decoded or any stream decompressed.

    Raises:
        RejectedInput: 413 too large, 415 not an image, 422 corrupt/truncated/too small.
    """
    return decode_upload_with_spacing(data, filename, max_pixels, limits)[0]


def decode_upload_with_spacing(data: bytes, filename: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                               limits=None, *, reduce_to: int = 0, size: dict | None = None
                               ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """:func:`decode_upload` and the upload's pixel spacing in mm (DICOM/NIfTI headers; ``None`` for rasters),
    see :func:`braintumor.outline.pixel_spacing`.

    ``reduce_to``: decode a JPEG at reduced size as :func:`~braintumor.data.read.read_image` does (the pixels
    ``predict`` and training prepare for a run with ``reduce_first``); ``size`` receives the upload's own
    ``(height, width)`` as ``size["shape"]``."""
    if limits is None:
        limits = service_limits(max_pixels=max_pixels)
    if limits is None:  # pragma: no cover - without the limits module
        return _decode(data, filename, max_pixels, reduce_to, size)
    from ..data.limits import use_limits

    with use_limits(limits):
        return _decode(data, filename, min(max_pixels, limits.max_pixels), reduce_to, size)


def _decode(data: bytes, filename: str | None, max_pixels: int, reduce_to: int = 0, size: dict | None = None
            ) -> tuple[np.ndarray, tuple[float, float] | None]:
    from PIL import Image

    from ..data.read import read_image

    if not data:
        raise RejectedInput(422, "the uploaded file is empty")
    identified = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                identified = True
    except Image.DecompressionBombError as exc:
        raise RejectedInput(413, f"image too large ({exc}); limit {max_pixels} pixels") from None
    except Exception:  # noqa: BLE001 - not a PIL raster; the reader decides (DICOM...) below
        identified = False
    if identified and w * h > max_pixels:
        raise RejectedInput(413, f"image too large: {w}x{h} pixels (limit {max_pixels} pixels)")
    name = Path(filename or "").name.lower()
    suffix = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix  # keep the double suffix of NIfTI
    suffix = suffix if suffix.replace(".", "").isalnum() and len(suffix) <= 8 else ""
    fd, tmp = tempfile.mkstemp(prefix="braintumor-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            img = read_image(tmp, reduce_to=reduce_to)
        except _too_large_error() as exc:
            raise RejectedInput(413, f"{exc.reason}") from None
        except UnreadableImageError as exc:
            raise RejectedInput(_status_for(exc.reason, identified), f"unreadable image: {exc.reason}") from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the input's fault, never a 500
            raise RejectedInput(422 if identified else 415, f"unreadable image: {type(exc).__name__}") from None
        if size is not None:
            size["shape"] = (h, w) if identified and reduce_to else img.shape[:2]
        spacing = None
        if not identified:  # raster images carry no physical size
            from ..outline import pixel_spacing

            try:
                spacing = pixel_spacing(tmp)
            except Exception:  # noqa: BLE001 - an odd spacing field costs the mm², never the answer
                spacing = None
        return img, spacing
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _forget_volume(tmp)


def _forget_volume(path: str) -> None:
    """Drop a request's temporary file from the NIfTI volume cache (it is gone: nothing may keep its pixels)."""
    try:
        from ..data.nifti import drop_cached
    except ImportError:  # pragma: no cover - older reader without the hook, or nibabel missing
        return
    with contextlib.suppress(Exception):
        drop_cached(path)


def _predict_response_model():
    """The pydantic model that documents ``POST /v1/predict``'s answer in the OpenAPI schema (documentation only:
    the endpoint returns its dict as it is)."""
    from pydantic import BaseModel, Field

    class ModelRef(BaseModel):
        name: str | None = None
        version: str | None = None
        fingerprint: str | None = None

    class Overlay(BaseModel):
        method: str = Field(examples=["layercam-tta"])
        target: str
        png_base64: str

    class PredictResponse(BaseModel):
        label: str = Field(description="the model's class (always given, whatever the verdict)", examples=["yes"])
        probabilities: dict[str, float] = Field(description="class -> calibrated probability",
                                                examples=[{"no": 0.03, "yes": 0.97}])
        verdict: str = Field(description="the answer to give: the class, or " + ", ".join(
            f"'{v}' ({t})" for v, t in VERDICT_TEXT.items()), examples=["yes", NOT_BRAIN, UNFAMILIAR, UNCERTAIN])
        in_distribution: bool | None = Field(description="the input passed the input check; null when the check is "
                                                         "off or the run has none")
        ood_score: float | None = Field(description="feature distance to the training data / threshold (above 1: "
                                                    "unfamiliar); null without the feature check")
        ood_reasons: list[str] = Field(description="the rules the image failed (verdict not_brain_mri)",
                                       examples=[["colour image (brain MRI is greyscale)"]])
        threshold: float | None = Field(None, description="binary decision threshold, or null for argmax")
        positive_class: str | None = None
        model: ModelRef
        image: dict[str, int] = Field(description="the uploaded image's width and height in pixels")
        overlay: Overlay | None = Field(None, description="explain=true: the heatmap overlay, or null when withheld")
        overlay_withheld: str | None = Field(None, description="why the overlay is null (verdict not_brain_mri or "
                                                               "unfamiliar)")
        outline: dict | None = Field(None, description="outline=true: the tumour outline, or null when withheld")
        outline_withheld: str | None = Field(None, description="why the outline is null (verdict not_brain_mri "
                                                               "or unfamiliar)")
        elapsed_ms: float

    return PredictResponse


def _page() -> str:
    text = resources.files("braintumor.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    return text.replace("{{NOTICE}}", html.escape(NOTICE))


def docs_html(schema: dict) -> str:
    """A self-contained HTML API reference rendered from an OpenAPI schema (no scripts, no external assets)."""
    e = html.escape
    parts = [f"<h1>{e(schema.get('info', {}).get('title', 'API'))} "
             f"<small>{e(str(schema.get('info', {}).get('version', '')))}</small></h1>",
             f"<p>{e(schema.get('info', {}).get('description', ''))}</p>",
             "<p>Machine-readable schema: <a href='/openapi.json'>/openapi.json</a> "
             "(load it into any OpenAPI viewer). This page works offline.</p>"]
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            parts.append(f"<section><h2><code>{e(method.upper())} {e(path)}</code></h2>"
                         f"<p><b>{e(op.get('summary', ''))}</b></p><pre>{e(op.get('description', '') or '')}</pre>")
            params = op.get("parameters") or []
            if params:
                parts.append("<h3>Parameters</h3><ul>" + "".join(
                    f"<li><code>{e(p['name'])}</code> ({e(p.get('in', ''))}, "
                    f"{e(str(p.get('schema', {}).get('type', '')))}): {e(p.get('description', '') or '')}</li>"
                    for p in params) + "</ul>")
            body = (op.get("requestBody") or {}).get("content") or {}
            if body:
                parts.append("<h3>Request body</h3><ul>" + "".join(
                    f"<li><code>{e(ct)}</code>: {e(str(c.get('schema', {}).get('properties', {}) or ''))}</li>"
                    for ct, c in body.items()) + "</ul>")
            resp = op.get("responses") or {}
            parts.append("<h3>Responses</h3><ul>" + "".join(
                f"<li><code>{e(code)}</code> {e(r.get('description', ''))}</li>" for code, r in resp.items())
                + "</ul></section>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
             "section{border-top:1px solid #ccc;margin-top:1rem}pre{white-space:pre-wrap;background:#f6f6f6;"
             "padding:.5rem}code{background:#eef;padding:0 .2rem}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>API docs</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def create_app(model: str | Path | Predictor, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, backend: str = "auto", notice=None, ood_check: bool = True,
               api_keys: list[str] | None = None, rate_limit: str | RateLimiter | None = None,
               cors_origins: list[str] | None = None, max_concurrent: int | None = None,
               queue_timeout: float = DEFAULT_QUEUE_TIMEOUT, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
               body_timeout: float = DEFAULT_BODY_TIMEOUT, max_voxels: int = DEFAULT_MAX_VOXELS,
               max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES, access_log: bool = False,
               metrics: bool = True, precision: str = "auto"):
    """The FastAPI app serving ``model`` (a run folder, an ``.onnx`` file or a loaded predictor).

    Args:
        model: a run folder, an ``.onnx`` file or a loaded predictor.
        max_upload_bytes, max_pixels: the input limits: bytes of one upload, pixels of one image or slice.
        max_voxels, max_decompressed_bytes: voxels of one volume (DICOM, NIfTI) and bytes a gzip/deflate stream
            may expand to. All size caps are read from headers before decoding (413 past them) and are never looser
            than the operator's ``BRAINTUMOR_MAX_*`` (:mod:`braintumor.data.limits`).
        backend: for a run folder, the engine of plain predictions: ``auto`` (onnxruntime on the CPU when it is
            installed, the export made on demand and cached; else torch), ``onnx`` or ``torch`` (see
            :func:`~braintumor.backends.load_predictor`). Grad-CAM always runs on the run's torch model.
        notice: called with one line when ``auto`` falls back to torch or an export is made.
        ood_check: apply the run's input check (:mod:`braintumor.ood`); ``False``: every ``verdict`` is the class
            and ``in_distribution`` is null, whatever a request asks (``--no-ood-check``).
        api_keys: keys of which one must come with every ``/v1/*`` request (``Authorization: Bearer KEY`` or
            ``X-API-Key: KEY``; 401 otherwise); ``None``: those of ``$BRAINTUMOR_API_KEYS``; ``[]``: no key.
        rate_limit: per-client limit on ``/v1/*`` (``"60/minute"`` or a
            :class:`~braintumor.serve.security.RateLimiter`; 429 with ``Retry-After`` past it); ``None``: none.
        cors_origins: origins allowed to call the API from a browser (``https://viewer.example.org``, or ``*``);
            ``None``: CORS off (same-origin only).
        max_concurrent: uploads decoded and predicted at once (default: the CPU count, at most 4); others wait
            up to ``queue_timeout`` seconds, then get a 503 with ``Retry-After``.
        request_timeout: seconds within which decoding + inference must be done, queueing included (then 504).
        body_timeout: seconds a client has to send the whole upload (then 408).
        access_log: log one JSON line per request on the ``braintumor.access`` logger (``--log-format json``).
        metrics: serve ``GET /metrics`` (Prometheus text format; needs ``prometheus-client``).

    Raises:
        UsageError: FastAPI is not installed (``pip install 'braintumor[serve]'``); a bad API key, rate limit,
            CORS origin or limit (the message names the option, the value and what is allowed).
        RunError: ``model`` is not a run folder or an exported ONNX file.

    Example:
        >>> from braintumor.serve import create_app
        >>> app = create_app("runs/demo", backend="auto")               # doctest: +SKIP
        >>> app.state.service.info["backend"], app.state.service.can_explain  # doctest: +SKIP
        ('onnxruntime', True)
        >>> app = create_app("runs/demo", api_keys=["k3y-for-the-pacs"], rate_limit="120/minute",
        ...                  cors_origins=["https://viewer.example.org"])  # doctest: +SKIP
    """
    _require_fastapi()
    settings = _settings(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, max_voxels=max_voxels,
                         max_decompressed_bytes=max_decompressed_bytes, body_timeout=body_timeout, api_keys=api_keys,
                         rate_limit=rate_limit, cors_origins=cors_origins, max_concurrent=max_concurrent,
                         queue_timeout=queue_timeout, request_timeout=request_timeout, access_log=access_log)
    service = _load_service(model, backend, notice, ood_check, precision)
    stats = ServiceMetrics({**service.model, "backend": service.info.get("backend")}) if metrics else None
    gate = DecodeGate(settings.max_concurrent, queue_timeout, request_timeout, metrics=stats)

    from fastapi import FastAPI

    app = FastAPI(
        title="braintumor", version=__version__, docs_url=None, redoc_url=None,
        description=f"Brain-MRI tumour classifier. {NOTICE}",
    )
    app.state.service = service
    app.state.gate = gate
    app.state.metrics = stats
    app.state.limits = settings.limits
    _add_error_handlers(app)
    _add_predict_route(app, service, gate, settings)
    _add_model_routes(app, service, gate, settings)
    _add_page_routes(app)
    _add_metrics_route(app, stats)
    _add_middleware(app, service, stats, settings)
    return app


# ------------------------------------------------------------------------------ the pieces of create_app, in order


def _require_fastapi() -> None:
    """UsageError naming the missing package when the ``serve`` extra is not installed."""
    try:
        import anyio  # noqa: F401
        import fastapi  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"serving needs the 'serve' extra ({exc.name} is missing): "
                         f"pip install 'braintumor[serve]'") from None


@dataclass(frozen=True)
class AppSettings:
    """The checked options of :func:`create_app` that its routes and middleware share."""

    max_upload_bytes: int
    #: pixels of one image, never more than the operator's limit
    max_pixels: int
    #: the size caps uploads are decoded under (:func:`service_limits`; ``None`` without the limits module)
    limits: object | None
    body_timeout: float
    max_concurrent: int
    keys: list[str]
    limiter: RateLimiter | None
    origins: list[str]
    access_log: bool

    @property
    def limit_mb(self) -> float:
        return self.max_upload_bytes / (1024 * 1024)


def _settings(*, max_upload_bytes, max_pixels, max_voxels, max_decompressed_bytes, body_timeout, api_keys,
              rate_limit, cors_origins, max_concurrent, queue_timeout, request_timeout, access_log) -> AppSettings:
    """The options checked (UsageError naming the option, the value and what is allowed) and resolved: API keys,
    rate limit, CORS origins, the number of decoding slots, the size caps."""
    keys = api_keys_from([]) if api_keys is None else api_keys_from(api_keys, env={})
    limiter = RateLimiter.parse(rate_limit) if isinstance(rate_limit, str) else rate_limit
    origins = _cors_origins(cors_origins)
    slots = max_concurrent if max_concurrent is not None else max(1, min(4, os.cpu_count() or 1))
    _check_number("max_concurrent", slots, whole=True)
    _check_number("max_upload_bytes", max_upload_bytes, whole=True)
    for name, value in (("queue_timeout", queue_timeout), ("request_timeout", request_timeout),
                        ("body_timeout", body_timeout)):
        _check_number(name, value)
    limits = service_limits(max_pixels, max_voxels, max_decompressed_bytes)
    if limits is not None:
        max_pixels = limits.max_pixels
    return AppSettings(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, limits=limits,
                       body_timeout=body_timeout, max_concurrent=int(slots), keys=keys, limiter=limiter,
                       origins=origins, access_log=access_log)


def _load_service(model, backend: str, notice, ood_check: bool, precision: str) -> ModelService:
    """The :class:`ModelService` of ``model``: for a run folder, the ``backend``'s predictor plus the torch model
    for Grad-CAM (also the source of an on-demand ONNX export)."""
    backend = {"onnxruntime": "onnx"}.get(str(backend).lower(), str(backend).lower())
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}': choose auto, onnx or torch")
    explainer = None
    if isinstance(model, Predictor):
        predictor = model
    elif Path(model).is_dir() and backend != "torch":
        explainer = Predictor.from_run(model)  # Grad-CAM; also the source of an on-demand export
        predictor = load_predictor(model, backend=backend, notice=notice, torch_predictor=explainer,
                                   precision=precision)
    else:
        predictor = load_predictor(model, backend=backend, notice=notice, precision=precision)
    return ModelService(predictor, explainer, ood_check=ood_check)


def _add_error_handlers(app) -> None:
    """Every refusal as ``{"detail": one line}``: :class:`Rejected` with its status and headers, a client gone
    mid-upload as 499 (logged), a bad query parameter as 422."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.requests import ClientDisconnect

    @app.exception_handler(Rejected)
    async def _rejected(request, exc: Rejected):
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc: ClientDisconnect):
        peer = request.client.host if request.client else "client"
        _log.warning("%s went away before its upload to %s was complete; nothing done", peer, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        msgs = "; ".join(f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors())
        return JSONResponse({"detail": f"invalid request: {msgs}"}, status_code=422)


async def _read_body(request, settings: AppSettings) -> bytes:
    """The request body, refused past ``max_upload_bytes`` (413, from ``Content-Length`` or while streaming) or
    when it does not arrive within ``body_timeout`` (408)."""
    import anyio

    cap = settings.max_upload_bytes + _MULTIPART_SLACK
    limit_mb, body_timeout = settings.limit_mb, settings.body_timeout
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RejectedInput(400, "invalid Content-Length header")
        if int(declared) > cap:
            raise RejectedInput(413, f"upload too large: {int(declared)} bytes (limit {limit_mb:g} MB)")
    buf = bytearray()
    try:
        with anyio.fail_after(body_timeout):
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > cap:
                    raise RejectedInput(413, f"upload too large (limit {limit_mb:g} MB)")
    except TimeoutError:
        raise RejectedInput(408, f"upload too slow: {len(buf)} bytes received in {body_timeout:g} s, the time "
                                 f"allowed for the whole request body", {"Connection": "close"}) from None
    return bytes(buf)


async def _image_bytes(request, body: bytes, settings: AppSettings) -> tuple[bytes, str | None]:
    """The uploaded file's bytes and name from a read ``body``: the multipart field ``file``, or a raw ``image/*``
    body (400 malformed form, 413 too large, 415 another content type, 422 no file)."""
    from starlette.requests import Request

    max_upload_bytes, limit_mb = settings.max_upload_bytes, settings.limit_mb
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.request", "body": b"", "more_body": False}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=32)
        except Exception as exc:  # noqa: BLE001 - malformed multipart is the client's fault
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise RejectedInput(400, f"malformed form body: {detail}") from None
        upload = form.get(FIELD)
        if upload is None or isinstance(upload, str):
            got = sorted(form.keys())
            why = "is text, not a file" if isinstance(upload, str) else f"is missing (got fields: {got})"
            raise RejectedInput(422, f"multipart field '{FIELD}' {why}; send the image as "
                                     f"-F '{FIELD}=@scan.png'")
        data = await upload.read()
        await form.close()
        if len(data) > max_upload_bytes:
            raise RejectedInput(413, f"upload too large: {len(data)} bytes (limit {limit_mb:g} MB)")
        return data, upload.filename
    if not body:
        raise RejectedInput(422, f"empty request: send the image as multipart/form-data field '{FIELD}' "
                                 f"(or the raw bytes with Content-Type image/*)")
    if ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
        if len(body) > max_upload_bytes:
            raise RejectedInput(413, f"upload too large: {len(body)} bytes (limit {limit_mb:g} MB)")
        return body, None
    raise RejectedInput(415, f"unsupported Content-Type '{ctype or 'none'}': send multipart/form-data with "
                             f"field '{FIELD}' (or the raw image with Content-Type image/*)")


def _predict_openapi(settings: AppSettings) -> tuple[dict, dict]:
    """``POST /v1/predict``'s documented responses and request body (OpenAPI)."""
    body = {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": [FIELD],
                                           "properties": {FIELD: {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}
    verdicts = ", ".join(f"``{v}`` ({t})" for v, t in VERDICT_TEXT.items())
    responses = {200: {"model": _predict_response_model(),
                       "description": f"the prediction: ``label`` (the model's class), ``probabilities`` and the "
                                      f"input check's ``verdict``: the class, or {verdicts}"}}
    errors = {400: {"description": "malformed request, explain=true on an ONNX model, or outline=true on a model "
                                   "without a tumour map"},
              401: {"description": "no valid API key (when the server requires one)"},
              408: {"description": "the upload did not arrive in time"},
              413: {"description": f"upload over {settings.limit_mb:g} MB, or image over {settings.max_pixels} "
                                   f"pixels (or a volume or compressed stream over the server's limits)"},
              415: {"description": "not an image"},
              422: {"description": "corrupt, truncated or too small image; missing 'file' field"},
              429: {"description": "rate limit exceeded (see Retry-After)"},
              503: {"description": "server busy: no decoding slot free in time (see Retry-After)"},
              504: {"description": "decoding and prediction took longer than the server's time limit"}}
    return {**responses, **errors}, body


def _answer_upload(service: ModelService, data: bytes, filename: str | None, settings: AppSettings, *,
                   explain: bool, outline: bool, outline_threshold: float, ood_check: bool):
    """Decoding and inference of one upload (run in one of the gate's slots): ``((height, width, 3), the
    prediction, the outline or None, the overlay or None)``."""
    # A plain prediction reads the upload as `predict` reads files (a JPEG at reduced size for runs with
    # reduce_first: the same pixels, the same answer); outlines and overlays are drawn on the upload's own pixels.
    plain = not (outline or explain)
    info: dict = {}
    img, spacing = decode_upload_with_spacing(data, filename, settings.max_pixels, settings.limits,
                                              reduce_to=service.predictor.preprocessor.decode_side if plain else 0,
                                              size=info)
    shape = overlay = None
    if outline:
        out, shape, prepared = service.predict_outline(img, spacing, outline_threshold, ood_check)
        if explain:
            _, overlay = service.predict_explain(img, prepared, out)
    elif explain:
        out, overlay = service.predict_explain(img, None, None, ood_check)
    else:
        out = service.predict(img, None, ood_check)
    return (*info["shape"], 3), out, shape, overlay


def _add_predict_route(app, service: ModelService, gate: DecodeGate, settings: AppSettings) -> None:
    """``POST /v1/predict``: read the upload (:func:`_read_body`, :func:`_image_bytes`), decode and predict in one of
    the gate's slots (:func:`_answer_upload`), add the overlay, outline and model fields."""
    from fastapi import Query, Request

    responses, predict_body = _predict_openapi(settings)

    @app.post("/v1/predict", summary="Classify one image", responses=responses,
              openapi_extra={"requestBody": predict_body})
    async def predict(request: Request,
                      explain: bool = Query(False, description="add a heatmap overlay PNG (base64); run folders "
                                                               "only"),
                      outline: bool = Query(False, description="add the tumour outline (area, bounding box, "
                                                               "contour); models trained with tumour masks only"),
                      outline_threshold: float = Query(0.5, ge=0.0, le=1.0,
                                                       description="tumour-map probability at and above which a "
                                                                   "pixel is tumour (with outline=true)"),
                      ood_check: bool = Query(True, description="apply the run's input check (is this a brain MRI "
                                                                "slice like the training data?); false: every "
                                                                "verdict is the class")):
        """Upload one image (multipart field ``file``). Returns ``label``, ``probabilities`` (class -> p, after the
        run's temperature), ``threshold`` (binary decision threshold, or null for argmax) and ``model``
        ``{name, version, fingerprint}``. With ``explain=true``: ``overlay`` ``{method, target, png_base64}``.
        With ``outline=true``: ``outline`` ``{found, area_px, area_mm2, bbox, components: [{contours}]...}`` in the
        uploaded image's pixel coordinates (x right, y down; mm² only for DICOM/NIfTI, whose headers give the
        pixel spacing).

        Whether the answer can be trusted (the run's input check, from the same model pass):

        - ``verdict``: the answer to give. The class when the input passes; ``not_brain_mri`` when the image is
          not a brain MRI slice (colour, blank, no dark background around a head, odd shape: the model gives no
          class); ``unfamiliar`` when it is unlike anything the model was trained on (another scanner, sequence,
          body part or modality: its class is not to be trusted); ``uncertain`` when the probability of the class
          is below the run's limit (``GET /v1/model`` ``input_check.min_confidence``).
        - ``in_distribution``: true/false, or null when the check is off (``ood_check=false``) or the run has none.
        - ``ood_score``: distance to the training data in the model's feature space divided by the threshold
          (above 1: unfamiliar), or null.
        - ``ood_reasons``: the rules the image failed (``not_brain_mri``), else empty.

        ``label`` and ``probabilities`` stay the model's class whatever the verdict. The status is 200 for every
        valid image file whatever its verdict. With ``not_brain_mri`` or ``unfamiliar`` no explanation is given:
        ``overlay`` (explain=true) and ``outline`` (outline=true) are null, and ``overlay_withheld`` /
        ``outline_withheld`` say why."""
        t0 = time.perf_counter()
        if explain and not service.can_explain:
            raise RejectedInput(400, "explain=true needs the torch model of a run folder; this server serves an "
                                     "ONNX file")
        if outline and not service.has_tumour_map:
            from ..outline import NO_DECODER

            raise RejectedInput(400, f"outline=true: {NO_DECODER}")
        body = await _read_body(request, settings)
        data, filename = await _image_bytes(request, body, settings)
        del body

        def work():
            return _answer_upload(service, data, filename, settings, explain=explain, outline=outline,
                                  outline_threshold=outline_threshold, ood_check=ood_check)

        (height, width, _), out, shape, overlay = await gate.run(work)
        predictor = service.predictor
        out.update({"threshold": predictor.threshold, "positive_class": predictor.positive_class,
                    "model": service.model, "image": {"width": int(width), "height": int(height)}})
        if explain:
            out["overlay"] = overlay
            if overlay is None:
                out["overlay_withheld"] = withheld_reason(out["verdict"], "heatmap overlay")
        if outline:
            out["outline"] = shape
            if shape is None:
                out["outline_withheld"] = withheld_reason(out["verdict"], "tumour outline")
        out["elapsed_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return out


def _add_model_routes(app, service: ModelService, gate: DecodeGate, settings: AppSettings) -> None:
    """``GET /v1/model`` (what is served, its limits and its model card) and ``GET /healthz``."""
    import anyio

    @app.get("/v1/model", summary="The served model")
    async def model_info():
        """Name, version (run), weights fingerprint, classes, input size, temperature, threshold, limits, whether
        Grad-CAM (``explain_available``) and outlines (``tumour_map``) are available, and the input check
        (``input_check``: ``available``, ``enabled``, ``threshold``, ``min_confidence``, ``rules``; a run made
        before the check existed says ``available: false`` with a ``note``). ``model_card``: the model card
        (Markdown: intended use, training data, preprocessing, validation metrics with 95% intervals, calibration,
        known failure modes, licence of the weights), from the run's ``model_card.md``, the ONNX file's metadata,
        or generated for older runs; render it as untrusted Markdown (no raw HTML)."""
        limits = settings.limits
        caps = {"max_voxels": limits.max_voxels, "max_decompressed_bytes": limits.max_decompressed_bytes} \
            if limits is not None else {}
        card = await anyio.to_thread.run_sync(service.model_card)
        return dict(service.info, explain_available=service.can_explain, tumour_map=service.has_tumour_map,
                    notice=NOTICE,
                    limits={"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels, **caps,
                            "field": FIELD, "max_concurrent": gate.slots, "request_timeout_s": gate.request_timeout,
                            "rate_limit": None if settings.limiter is None else settings.limiter.describe(),
                            "api_key_required": bool(settings.keys)},
                    model_card=card)

    @app.get("/healthz", summary="Liveness")
    async def healthz():
        return {"status": "ok", "model": service.model}


def _add_page_routes(app) -> None:
    """``GET /`` (the page), ``GET /docs`` (the offline API reference) and ``GET /favicon.ico`` (none: 204), each
    under its Content-Security-Policy."""
    from fastapi.responses import HTMLResponse, Response

    page = _page()

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return HTMLResponse(docs_html(app.openapi()), headers={"Content-Security-Policy": DOCS_CSP})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)


def _add_metrics_route(app, stats: ServiceMetrics | None) -> None:
    """``GET /metrics``: Prometheus text (404 when metrics are off or ``prometheus-client`` is missing)."""
    from fastapi.responses import Response

    @app.get("/metrics", include_in_schema=False)
    async def metrics_text():
        if stats is None or not stats.available:
            raise RejectedInput(404, "metrics are off on this server" if stats is None else
                                "metrics need prometheus-client: pip install 'braintumor[serve]'")
        text, ctype = stats.render()
        return Response(text, media_type=ctype)


def _add_middleware(app, service: ModelService, stats: ServiceMetrics | None, settings: AppSettings) -> None:
    """From the inside out: ``X-Content-Type-Options: nosniff`` on every response, the service controls (API keys,
    rate limit, metrics, access log; :class:`~braintumor.serve.controls.ServiceControls`), then CORS when origins
    are allowed."""

    @app.middleware("http")
    async def _headers(request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    app.add_middleware(ServiceControls, keys=settings.keys, limiter=settings.limiter, metrics=stats,
                       model=service.model, access_log=settings.access_log)
    if settings.origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"], max_age=600)


def _check_number(name: str, value, whole: bool = False) -> None:
    """A positive finite number (a whole one with ``whole``), else UsageError naming ``name`` and the value."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and whole:
        ok = value == int(value) and value >= 1
    if not ok:
        raise UsageError(f"{name}={value!r} is not allowed: need a positive {'whole ' if whole else ''}number")


def _cors_origins(origins) -> list[str]:
    """Validated ``--cors-origin`` values: ``*`` or ``scheme://host[:port]`` (no path), without duplicates."""
    import re

    out: list[str] = []
    for o in origins or []:
        o = str(o).strip().rstrip("/")
        if o != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", o):
            raise UsageError(f"--cors-origin '{o}' is not allowed: give an origin like https://viewer.example.org or "
                             f"http://localhost:3000 (scheme, host and port, no path), or *")
        if o not in out:
            out.append(o)
    return out
