"""ONNX export of a run, and :class:`OnnxPredictor`: the exported file alone is enough to predict.

The exported graph takes a normalised ``float32`` batch ``input`` of shape ``(batch, 3, S, S)`` (dynamic batch) and
returns ``logits`` and ``probabilities`` (softmax of ``logits / temperature``); a run trained with tumour masks (a
tumour-map decoder, see :mod:`braintumor.models.segmentation`) adds a third output, ``tumour_map`` ``(batch, S, S)``:
the tumour probability map (sigmoid of the decoder's logits), from the same backbone pass. Everything else a
prediction needs (classes, the preprocessing, input size, normalisation, temperature, threshold, positive class,
model name, data and weights fingerprints) is embedded in the file's ``metadata_props``: ``braintumor.metadata``
holds the run's metadata as JSON, a few flat keys (``classes``, ``img_size``...) make it readable in tools such
as Netron, and ``model_card`` holds the run's model card (Markdown, :mod:`braintumor.model_card`).

At export the ONNX model is run next to the torch model on real images (the run's validation images from
``split.csv``, or images you give); the export FAILS (:class:`ParityError`, no file written) when the largest
absolute difference of the probabilities exceeds ``atol`` (default ``1e-4``), or, with a tumour map, that of the
maps exceeds ``map_atol`` (default ``1e-3``).

Example:
    >>> from braintumor.export import export_onnx, OnnxPredictor
    >>> res = export_onnx("runs/navoneel", "model.onnx")              # doctest: +SKIP
    >>> res.max_abs_diff < 1e-4                                         # doctest: +SKIP
    True
    >>> pred = OnnxPredictor("model.onnx")                              # doctest: +SKIP
    >>> [p.label for p in pred.predict_paths(["scan.jpg"])]             # doctest: +SKIP
    ['yes']
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BrainTumorError, RunError, UnreadableImageError, UsageError
from .inference import Predictor
from .lazy import torch
from .metrics import softmax
from .preprocess import Preprocessor
from .rundir import RunDir, atomic_write_bytes

#: ``metadata_props`` key holding the run's full metadata as JSON.
METADATA_KEY = "braintumor.metadata"
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")
#: The extra output of a run with a tumour-map decoder.
MAP_OUTPUT = "tumour_map"
#: The extra output of a run with a fitted input check (:mod:`braintumor.ood`): feature distance / threshold.
OOD_OUTPUT = "ood_score"
OPSET = 17


class ParityError(BrainTumorError):
    """The exported ONNX model does not reproduce the torch model's probabilities (or tumour maps): the export is
    refused."""


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise UsageError(f"ONNX needs the 'onnx' extra ({exc.name or exc} is missing): pip install "
                         f"'braintumor[onnx]'") from None
    return onnx, onnxruntime


def _require_ort():
    """onnxruntime alone (enough to run an exported file)."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("onnxruntime is not installed: pip install 'braintumor[onnx]'") from None
    return onnxruntime


@functools.cache
def _exportable_class() -> type:
    """The export wrapper's class, defined on first use (torch is imported then)."""

    class _Exportable(torch.nn.Module):
        """The classifier plus the calibrated softmax, so non-Python consumers get probabilities directly.

        ``with_map``: a third output ``tumour_map`` (sigmoid of the decoder's logits, same backbone pass; what
        :class:`~braintumor.models.segmentation.ProbabilitiesAndMap` returns). ``distance``: a last output
        ``ood_score``, the input check's feature distance / threshold (:mod:`braintumor.ood`) on the pooled features of
        the same pass. ``logits`` stays the first output so every consumer of a plain export works unchanged.
        """

        def __init__(self, model: torch.nn.Module, temperature: float, with_map: bool = False,
                     distance: torch.nn.Module | None = None):
            super().__init__()
            self.model = model
            self.with_map = with_map
            self.distance = distance
            self.register_buffer("inv_temperature", torch.tensor(1.0 / float(temperature), dtype=torch.float32))

        def forward(self, input: torch.Tensor):  # noqa: A002 - the ONNX input name
            pooled: list[torch.Tensor] = []
            handle = (self.model.pool.register_forward_hook(lambda _m, _i, o: pooled.append(o))
                      if self.distance is not None else None)
            try:
                if self.with_map:
                    from .models.segmentation import forward_with_map

                    logits, maps = forward_with_map(self.model, input)
                else:
                    logits, maps = self.model(input), None
            finally:
                if handle is not None:
                    handle.remove()
            out = [logits, torch.softmax(logits * self.inv_temperature, dim=1)]
            if maps is not None:
                out.append(torch.sigmoid(maps[:, 0]))
            if self.distance is not None:
                out.append(self.distance(pooled[-1].flatten(1)))
            return tuple(out)

    return _Exportable


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how closely it matches torch."""

    path: Path
    max_abs_diff: float
    n_checked: int
    check_source: str
    labels_agree: bool
    size_bytes: int
    #: largest absolute difference of the tumour maps (runs with a tumour-map decoder; else ``None``)
    map_max_abs_diff: float | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "max_abs_diff": self.max_abs_diff, "n_checked": self.n_checked,
                "check_source": self.check_source, "labels_agree": self.labels_agree, "size_bytes": self.size_bytes,
                "map_max_abs_diff": self.map_max_abs_diff}


def onnx_metadata(predictor: Predictor) -> dict[str, str]:
    """The ``metadata_props`` written into the file (all values are strings)."""
    meta = dict(predictor.metadata)
    meta.setdefault("calibration", {})
    meta["calibration"] = dict(meta["calibration"] or {}, temperature=predictor.temperature)
    meta["threshold"] = predictor.threshold
    meta["weights_fingerprint"] = predictor.fingerprint
    if predictor.run_dir is not None:
        meta.setdefault("run_name", Path(predictor.run_dir).resolve().name)
    stamp = predictor.checkpoint_stamp()
    if stamp is not None:
        meta["checkpoint"] = stamp
    pre = predictor.preprocessor
    props = {
        METADATA_KEY: json.dumps(meta, default=str),
        "model": str(meta.get("model", "")),
        "classes": json.dumps(predictor.classes),
        "positive_class": json.dumps(predictor.positive_class),
        "img_size": str(pre.img_size),
        "preprocessing": json.dumps(pre.to_dict()),
        "normalisation": json.dumps({"mean": list(pre.mean), "std": list(pre.std)}),
        "temperature": repr(float(predictor.temperature)),
        "threshold": json.dumps(predictor.threshold),
        "data_fingerprint": str((meta.get("data") or {}).get("fingerprint", "")),
        "weights_fingerprint": predictor.fingerprint,
        "input": f"{INPUT_NAME}: float32 (batch, 3, {pre.img_size}, {pre.img_size}), normalised by the Preprocessor",
        "outputs": "logits (batch, n_classes); probabilities = softmax(logits / temperature)",
    }
    if predictor.has_tumour_map:
        props["outputs"] += (f"; {MAP_OUTPUT} (batch, {pre.img_size}, {pre.img_size}) = tumour probability map on "
                             f"the prepared image")
    if predictor.has_input_check:
        props["outputs"] += (f"; {OOD_OUTPUT} (batch,) = input check: feature distance / threshold (above 1: unlike "
                             f"the training data)")
    if stamp is not None:
        props["checkpoint_sha256"] = stamp["sha256"]
    card = _model_card(predictor, meta)
    if card is not None:
        from .model_card import MODEL_CARD_KEY

        props[MODEL_CARD_KEY] = card
    return props


def _model_card(predictor: Predictor, meta: dict) -> str | None:
    """The card embedded in an export: the run folder's (its ``model_card.md``, else generated), or
    one generated from the metadata of a predictor without a run folder; ``None`` when it cannot be made."""
    from .model_card import render_model_card, run_model_card

    try:
        if predictor.run_dir is not None:
            return run_model_card(predictor.run_dir)
        return render_model_card(meta)
    except (BrainTumorError, OSError):  # the card never costs the export
        return None


def _export_bytes(predictor: Predictor) -> bytes:
    """The legacy TorchScript-based exporter (opset 17, dynamic batch): robust for every registered model."""
    with_map = predictor.has_tumour_map
    check = predictor.input_check if predictor.has_input_check else None
    model = predictor.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    distance = check.distance.torch_module(check.threshold) if check is not None else None
    wrapper = _exportable_class()(model, predictor.temperature, with_map, distance).eval()
    s = predictor.preprocessor.img_size
    dummy = torch.zeros(2, 3, s, s)
    names = list(OUTPUT_NAMES) + ([MAP_OUTPUT] if with_map else []) + ([OOD_OUTPUT] if check is not None else [])
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (dummy,), buf, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=names, do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )
    # Put the model back the way the Predictor uses it (plain NCHW, see Predictor.__init__).
    predictor.model = model.to(predictor.device)
    return buf.getvalue()


def _with_metadata(onnx_bytes: bytes, props: dict[str, str]) -> bytes:
    onnx, _ = _require_onnx()
    from . import __version__

    proto = onnx.load_from_string(onnx_bytes)
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "braintumor"
    proto.producer_version = __version__
    proto.doc_string = "braintumor classifier; see metadata_props['braintumor.metadata']"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _validation_images(run_dir: Path, pre: Preprocessor, limit: int) -> list[np.ndarray]:
    """Prepared images of the run's validation split (``split.csv``), unreadable ones skipped."""
    from .data.read import read_image
    from .data.split import read_split_file

    if not (run_dir / "split.csv").is_file():
        return []
    paths = [r["path"] for r in read_split_file(run_dir) if r["subset"] == "val"]
    out = []
    for p in paths:
        if len(out) >= limit:
            break
        try:
            out.append(pre.prepare(read_image(p)))
        except UnreadableImageError:
            continue
    return out


def _check_images(predictor: Predictor, images: Sequence[str | Path] | None, limit: int
                  ) -> tuple[np.ndarray, str]:
    from .data.discover import list_images
    from .data.read import read_image

    pre = predictor.preprocessor
    if images:
        files = [f for p in images for f in list_images(p)]
        prepared = []
        for f in files[:limit]:
            try:
                prepared.append(pre.prepare(read_image(f)))
            except UnreadableImageError:
                continue
        if not prepared:
            raise UsageError(f"no readable image among the parity-check images {list(map(str, images))}")
        return np.stack(prepared), f"{len(prepared)} given image(s)"
    if predictor.run_dir is not None:
        val = _validation_images(Path(predictor.run_dir), pre, limit)
        if val:
            return np.stack(val), f"{len(val)} validation image(s) from split.csv"
    # No real image reachable (the training data moved): synthetic phantoms keep the check meaningful.
    from .data.synthetic import make_phantom

    rng = np.random.default_rng(0)
    ph = [make_phantom(rng, size=max(64, pre.img_size), tumour=bool(i % 2))[0] for i in range(min(limit, 16))]
    return np.stack([pre.prepare(np.repeat(g[..., None], 3, axis=2)) for g in ph]), \
        f"{len(ph)} synthetic phantom(s) (validation images not found)"


def _reference_proba(predictor: Predictor, prepared: np.ndarray) -> np.ndarray:
    return predictor.proba_prepared(prepared)


def export_onnx(run: str | Path | Predictor, out: str | Path | None = None, *,
                check_images: Sequence[str | Path] | None = None, n_check: int = 64, atol: float = 1e-4,
                map_atol: float = 1e-3) -> ExportResult:
    """Export a run (folder or loaded :class:`Predictor`) to one self-describing ONNX file.

    Args:
        run: a run folder, or a torch :class:`Predictor`.
        out: the ``.onnx`` file (default ``RUN/model.onnx``).
        check_images: files/folders/globs for the parity check (default: the run's validation images).
        n_check: at most this many images are compared.
        atol: largest accepted absolute difference of any probability.
        map_atol: largest accepted absolute difference of any tumour-map pixel (runs with a tumour-map decoder,
            which export a third output, ``tumour_map``).

    Raises:
        ParityError: onnxruntime's probabilities differ from torch's by more than ``atol``, or its tumour maps by
            more than ``map_atol`` (nothing written).
        RunError: not a run folder.

    Example:
        >>> from braintumor import export_onnx
        >>> res = export_onnx("runs/demo")                                # doctest: +SKIP
        >>> res.path, res.max_abs_diff < 1e-4                             # doctest: +SKIP
        (PosixPath('runs/demo/model.onnx'), True)
    """
    predictor = run if isinstance(run, Predictor) else Predictor.from_run(run, device="cpu")
    if out is None:
        if predictor.run_dir is None:
            raise UsageError("give the output .onnx path")
        out = RunDir(predictor.run_dir).onnx
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"{out}: the output file must end in .onnx")
    data, res = _build_checked(predictor, check_images, n_check, atol, map_atol)
    atomic_write_bytes(out, lambda fh: fh.write(data))
    res.path = out
    return res


def _build_checked(predictor: Predictor, check_images: Sequence[str | Path] | None, n_check: int, atol: float,
                   map_atol: float = 1e-3) -> tuple[bytes, ExportResult]:
    """The ONNX bytes of ``predictor`` after the parity check (``ExportResult.path`` not set yet)."""
    if predictor.model is None:
        raise UsageError("export needs a torch model (a run folder), not an ONNX predictor")
    _require_onnx()
    data = _with_metadata(_export_bytes(predictor), onnx_metadata(predictor))

    prepared, source = _check_images(predictor, check_images, n_check)
    onnx_pred = OnnxPredictor(data)
    map_diff = None
    if predictor.has_tumour_map:
        ref, ref_maps = predictor.proba_and_maps_prepared(prepared)
        got, got_maps = onnx_pred.proba_and_maps_prepared(prepared, batch_size=16)
        map_diff = float(np.abs(ref_maps - got_maps).max()) if len(ref_maps) else 0.0
    else:
        ref = _reference_proba(predictor, prepared)
        got = onnx_pred.proba_prepared(prepared, batch_size=16)
    diff = float(np.abs(ref - got).max()) if len(ref) else 0.0
    agree = predictor.labels_from_proba(ref) == onnx_pred.labels_from_proba(got)
    if not np.isfinite(diff) or diff > atol:
        raise ParityError(f"ONNX export refused: probabilities differ from torch by {diff:.3g} (> {atol:g}) "
                          f"on {source}")
    if map_diff is not None and (not np.isfinite(map_diff) or map_diff > map_atol):
        raise ParityError(f"ONNX export refused: tumour maps differ from torch by {map_diff:.3g} (> {map_atol:g}) "
                          f"on {source}")
    return data, ExportResult(Path(), diff, len(prepared), source, agree, len(data), map_diff)


class OnnxPredictor(Predictor):
    """A :class:`Predictor` backed by onnxruntime and a file written by :func:`export_onnx`.

    Same interface (``predict_paths``, ``proba_prepared``, ``predict_proba``, ``labels_from_proba``,
    ``classes``, ``threshold``...; ``has_tumour_map`` and ``proba_and_maps_prepared`` for an export of a run with a
    tumour-map decoder). The preprocessing is the run's :class:`Preprocessor`, rebuilt from the file's
    metadata. ``model`` is ``None``: Grad-CAM needs the torch model of a run folder.

    A file from outside is data, not code: it is read into memory (at most :data:`MAX_ONNX_BYTES`) and handed to
    onnxruntime as bytes with default session options, so no custom-op library is registered and no external-data
    file beside it is read (an operator onnxruntime does not ship makes the file unloadable); its embedded metadata
    is checked by :func:`read_onnx_metadata` (schema, graph shapes) before anything is taken from it.

    Args:
        path: the ``.onnx`` file (or its bytes).
        threads: onnxruntime intra-op threads (``None``: its default, one per physical core).
        spinning: let idle onnxruntime threads spin-wait for work. Off by default: spinning burns the cores that
            decoding and preprocessing run on between batches (and those of other requests when serving); on a
            2-core CPU it made batch-1 latency and throughput worse (benchmarks/inference.py).

    Example:
        >>> from braintumor import OnnxPredictor
        >>> pred = OnnxPredictor("runs/demo/model.onnx")                  # doctest: +SKIP
        >>> pred.predict_paths(["scan.png"])[0].label                     # doctest: +SKIP
        'yes'
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path | bytes, threads: int | None = None, spinning: bool = False):
        ort = _require_ort()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        name = "ONNX bytes" if isinstance(path, bytes) else str(path)
        if isinstance(path, bytes):
            data = path
        else:
            if not Path(path).is_file():
                raise RunError(f"{path}: no such ONNX file")
            data = _read_onnx_file(Path(path))
        try:  # from bytes: nothing but the file itself is read (no external-data files beside it)
            self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise RunError(f"{name}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        meta = read_onnx_metadata(self.session, name)
        self.path = None if isinstance(path, bytes) else Path(path)
        self.model = None
        self.preprocessor = Preprocessor.from_dict(meta["preprocessing"])
        self.classes = list(meta["classes"])
        self.positive_class = meta.get("positive_class")
        self.temperature = float((meta.get("calibration") or {}).get("temperature") or 1.0)
        self.threshold = meta.get("threshold")
        self.metadata = meta
        from .ood import InputCheck

        try:  # the distance itself is in the graph (output ood_score): only the settings are read here
            self.input_check = InputCheck.from_metadata(meta, arrays={})
        except RunError as exc:
            raise RunError(f"{name}: {exc}") from None
        self.check_inputs = True
        self.run_dir = None
        self.checkpoint_file = None
        self._fingerprint = meta.get("weights_fingerprint")
        #: An FP32 predictor that recomputes the rows this (INT8) model leaves within ``guard_band`` of a label
        #: change (:func:`~braintumor.metrics.decision_margin`): set by :func:`~braintumor.quantize.int8_for_run`
        #: when the run's INT8 check passed only with the guard. ``guarded`` counts the rows recomputed.
        self.guard: OnnxPredictor | None = None
        self.guard_band = 0.0
        self.guarded = 0
        self.tta = False

    def __repr__(self) -> str:
        return (f"OnnxPredictor({str(self.path) if self.path else '<bytes>'!r}, model={self.metadata.get('model')!r}, "
                f"classes={self.classes}, img_size={self.preprocessor.img_size})")

    @property
    def device(self):
        """The CPU, as a torch device (torch is imported only when this is asked for)."""
        return torch.device("cpu")

    def logits(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Logits for a normalised ``(N, 3, S, S)`` tensor, through onnxruntime (thread-safe)."""
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        outs = [self.session.run(["logits"], {INPUT_NAME: arr[i:i + batch_size]})[0]
                for i in range(0, len(arr), batch_size)]
        return torch.from_numpy(np.concatenate(outs)) if outs else torch.empty(0, len(self.classes))

    @property
    def has_tumour_map(self) -> bool:
        """Whether the file has the ``tumour_map`` output (an export of a run trained with ``--masks``)."""
        return MAP_OUTPUT in {o.name for o in self.session.get_outputs()}

    @property
    def has_input_check(self) -> bool:
        """Whether the file computes the input check's ``ood_score`` (an export of a run with a fitted check)."""
        return self.input_check is not None and OOD_OUTPUT in {o.name for o in self.session.get_outputs()}

    def _outputs_batch(self, images: np.ndarray, maps: bool, scores: bool
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One batch of :meth:`Predictor.outputs_prepared` on the graph's ``logits``, ``tumour_map`` and
        ``ood_score`` outputs; the probabilities are computed from ``logits`` exactly as :meth:`proba_prepared`
        does."""
        x = self.preprocessor.normalise_array(images)  # NumPy: this path never imports torch
        names = ["logits"] + ([MAP_OUTPUT] if maps else []) + ([OOD_OUTPUT] if scores else [])
        res = dict(zip(names, self.session.run(names, {INPUT_NAME: x}), strict=True))
        proba = softmax(res["logits"].astype(np.float32) / np.float32(self.temperature))
        if self.guard is not None and self.guard_band > 0:
            from .metrics import decision_margin

            near = decision_margin(proba, self.threshold, self.positive_index) < self.guard_band
            if near.any():  # too close to a label change for 8-bit rounding: FP32 decides these rows
                proba[near] = self.guard._outputs_batch(images[near], False, False)[0]
                self.guarded += int(near.sum())
        return proba, res.get(MAP_OUTPUT), res.get(OOD_OUTPUT)

    def proba_prepared(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities for already prepared ``uint8`` images ``(N, S, S, 3)`` (through :attr:`guard` where set)."""
        return self.outputs_prepared(images, maps=False, scores=False, batch_size=batch_size).proba


#: An ``.onnx`` file larger than this is refused unread (protobuf's own limit; exports are a few MiB to ~100 MiB).
MAX_ONNX_BYTES = 2 << 30


def _read_onnx_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_ONNX_BYTES:
            raise RunError(f"{path}: {size / 2**30:.1f} GiB, larger than an ONNX model can be (2 GiB)")
        return path.read_bytes()
    except OSError as exc:
        raise RunError(f"{path}: cannot read the ONNX file ({exc.strerror or exc})") from None


def _shape_text(shape) -> str:
    """``('batch', 3, 64, 64)``: an ONNX shape with its symbolic dimensions by name."""
    return "(" + ", ".join(str(d) if isinstance(d, int) else repr(str(d or "?")) for d in shape) + ")"


def read_onnx_metadata(session, name: str) -> dict:
    """The run metadata embedded in an exported model, checked against the schema and against the graph.

    The JSON under :data:`METADATA_KEY` goes through :func:`braintumor.schema.validate_metadata` (the same checks
    as a run's ``metadata.json``: a string or non-positive temperature, a threshold outside ``[0, 1]``... are
    refused, never obeyed), then must agree with the graph: the input ``(batch, 3, S, S)`` with ``S`` the
    metadata's ``img_size`` (where the graph fixes it) and a ``logits`` output with one column per class, and with
    the flat ``classes``/``img_size``/``temperature``/``threshold`` entries written beside it.

    Raises:
        RunError: one line naming the file, the field and the disagreement.
    """
    from .schema import parse_json, validate_metadata

    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise RunError(f"{name}: not exported by braintumor (no '{METADATA_KEY}' metadata)")
    where = f"{name} (metadata '{METADATA_KEY}')"
    meta = validate_metadata(parse_json(props[METADATA_KEY], where), where)
    where = f"{name}: the embedded metadata"
    classes, size = meta["classes"], meta["img_size"]
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or len(inputs) != 1:
        raise RunError(f"{name}: the graph's inputs are {sorted(inputs)}, not one '{INPUT_NAME}'")
    shape = list(inputs[INPUT_NAME].shape)
    static = [d if isinstance(d, int) else None for d in shape]
    if len(shape) != 4 or static[1] not in (None, 3) or any(d not in (None, size) for d in static[2:]):
        raise RunError(f"{where} says img_size {size} (input (batch, 3, {size}, {size})), but the graph's input is "
                       f"{_shape_text(shape)}")
    if "logits" not in outputs:
        raise RunError(f"{name}: the graph has no 'logits' output (outputs: {', '.join(sorted(outputs))[:200]})")
    out_shape = list(outputs["logits"].shape)
    width = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) else None
    if len(out_shape) != 2 or (width is not None and width != len(classes)):
        raise RunError(f"{where} lists {len(classes)} classes, but the graph's logits have shape "
                       f"{_shape_text(out_shape)}")
    temperature = float((meta.get("calibration") or {}).get("temperature") or 1.0)
    flat = {"classes": classes, "img_size": size, "temperature": temperature, "threshold": meta.get("threshold")}
    for key, want in flat.items():
        if key not in props:
            continue
        try:
            got = json.loads(props[key])
        except ValueError:
            got = props[key]
        if isinstance(want, float):
            same = isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - want) <= 1e-9 * want
        else:
            same = got == want
        if not same:
            raise RunError(f"{name}: metadata entry '{key}' is {str(props[key])[:60]!r} but the embedded metadata "
                           f"says {json.dumps(want)[:60]}: the file was altered")
    return meta


# ------------------------------------------------------------------ the run folder's fast path (export on demand)


def default_cache_dir() -> Path:
    """Where on-demand exports of read-only run folders go: ``$XDG_CACHE_HOME/braintumor/onnx`` (default
    ``~/.cache/braintumor/onnx``).

    Example:
        >>> from braintumor.export import default_cache_dir
        >>> default_cache_dir()                                           # doctest: +SKIP
        PosixPath('/home/me/.cache/braintumor/onnx')
    """
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (some service accounts)
            import tempfile

            base = str(Path(tempfile.gettempdir()) / "braintumor-cache")
    return Path(base) / "braintumor" / "onnx"


def _prediction_settings(meta: dict) -> dict:
    """What an export must share with the run's ``metadata.json`` (besides the weights) to predict the same."""
    calib = meta.get("calibration") or {}
    pre = meta.get("preprocessing")
    return {"model": meta.get("model"), "classes": list(meta.get("classes") or []),
            "positive_class": meta.get("positive_class"), "threshold": meta.get("threshold"),
            "temperature": float(calib.get("temperature") or 1.0),
            "input_check": _check_settings(meta.get("input_check")),
            "preprocessing": Preprocessor.from_dict(pre).to_dict() if isinstance(pre, dict) else pre}


def _check_settings(entry) -> dict | None:
    """The parts of ``input_check`` an export bakes in (a refit changes them and makes the export stale)."""
    if not isinstance(entry, dict):
        return None
    return {"threshold": entry.get("threshold"), "fitted": entry.get("fitted")}


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def stamp_matches(stamp: dict, ckpt: Path, sha: Callable[[], str] | None = None) -> bool:
    """Whether an export's ``checkpoint`` stamp (written at export) names the checkpoint file ``ckpt`` as it is now:
    the same size and modification time, else the same SHA-256 (``sha()``, computed only when needed)."""
    from .inference import file_sha256

    st = ckpt.stat()
    if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
        return True
    return stamp.get("sha256") == (sha() if sha is not None else file_sha256(ckpt))


def onnx_for_run(run_dir: str | Path, *, predictor: Predictor | None = None, cache_dir: str | Path | None = None,
                 notice=None, n_check: int = 16, atol: float = 1e-4) -> OnnxPredictor:
    """The onnxruntime predictor of a run folder's best checkpoint, exported on demand and cached.

    ``RUN/model.onnx`` is used when it is current: exported from the same checkpoint (the checkpoint's size and
    modification time, else its SHA-256, recorded at export; the weights fingerprint for older exports) with the
    same classes, preprocessing, temperature and threshold as ``metadata.json``. Otherwise the run is exported
    again (parity-checked against torch on ``n_check`` validation images, see :func:`export_onnx`) and written
    atomically to ``RUN/model.onnx``, or to :func:`default_cache_dir` when the run folder is read-only.
    The predictor reports the run's metadata (``model_info`` is the torch predictor's, backend aside).

    Args:
        run_dir: a run folder.
        predictor: the run's torch predictor, when already loaded (used for an export instead of loading it again).
        cache_dir: the cache for read-only run folders (default :func:`default_cache_dir`).
        notice: called with one line before an export (it takes a few seconds).
        n_check, atol: the parity check of an export.

    Raises:
        UsageError: onnxruntime (or, for an export, onnx) is not installed.
        ParityError: a fresh export does not reproduce torch's probabilities within ``atol``.
        RunError: not a run folder, or no best checkpoint.
        BrainTumorError: the export could be written neither to the run folder nor to the cache.

    Example:
        >>> from braintumor.export import onnx_for_run
        >>> pred = onnx_for_run("runs/demo")          # exports runs/demo/model.onnx the first time  # doctest: +SKIP
        >>> pred.backend, pred.path.name                                  # doctest: +SKIP
        ('onnxruntime', 'model.onnx')
    """
    from .inference import file_sha256

    _require_ort()
    run = RunDir(run_dir)
    meta = run.read_metadata()
    from .inference import require_complete

    require_complete(run.root, meta)
    ckpt = run.best
    if not ckpt.is_file():
        raise RunError(f"{run.root}: no checkpoint {ckpt.relative_to(run.root)}")
    settings = _prediction_settings(meta)
    digest: list[str] = []
    loaded: list[Predictor] = [predictor] if predictor is not None else []

    def sha() -> str:
        if not digest:
            digest.append(file_sha256(ckpt))
        return digest[0]

    def torch_predictor() -> Predictor:
        if not loaded:
            loaded.append(Predictor.from_run(run.root, device="cpu"))
        return loaded[0]

    def current(path: Path) -> OnnxPredictor | None:
        if not path.is_file():
            return None
        try:
            pred = OnnxPredictor(path)
        except BrainTumorError:
            return None  # unreadable or foreign file: exported again below
        m = pred.metadata
        if _prediction_settings(m) != settings:
            return None
        if isinstance(meta.get("tumour_map"), dict) and not pred.has_tumour_map:
            return None  # exported before the tumour-map output existed
        if isinstance(meta.get("input_check"), dict) and meta["input_check"].get("file") and not pred.has_input_check:
            return None  # exported before the input check was fitted
        stamp = m.get("checkpoint")
        if isinstance(stamp, dict):
            return pred if stamp_matches(stamp, ckpt, sha) else None
        # An export without the stamp (older versions): compare the weights themselves.
        return pred if m.get("weights_fingerprint") == torch_predictor().fingerprint else None

    def cache_file() -> Path:
        tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return Path(cache_dir or default_cache_dir()) / f"{sha()[:16]}-{tag}.onnx"

    found = current(run.onnx) or current(cache_file())
    if found is None:
        targets = ([run.onnx] if _writable(run.root) else []) + [cache_file()]
        if notice is not None:
            notice(f"exporting {run.root} to ONNX for onnxruntime (once; reused while the checkpoint is unchanged)")
        try:
            data, _ = _build_checked(torch_predictor(), None, n_check, atol)
        except BrainTumorError:
            raise
        except Exception as exc:  # noqa: BLE001 - the exporter's own errors become one line
            raise BrainTumorError(f"{run.root}: ONNX export failed ({type(exc).__name__}: "
                                  f"{(str(exc).splitlines() or [''])[0][:200]})") from None
        errors = []
        for target in targets:
            try:
                atomic_write_bytes(target, lambda fh: fh.write(data))
            except OSError as exc:
                errors.append(f"{target.parent}: {exc.strerror or exc}")
                continue
            found = OnnxPredictor(target)
            break
        if found is None:
            raise BrainTumorError(f"{run.root}: cannot write the ONNX export ({'; '.join(errors)})")
    # Report the run as the torch predictor does (same name, version, data fingerprint).
    found.metadata = dict(meta)
    found.run_dir = run.root
    found.checkpoint_file = ckpt
    return found
