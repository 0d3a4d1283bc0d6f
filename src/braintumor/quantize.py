"""INT8 inference: a statically quantised copy of a run's ONNX export, used only when it agrees with FP32.

8-bit integer arithmetic runs the same network several times faster than FP32 on CPUs with VNNI (AVX512-VNNI,
AVX-VNNI) and still faster without. :func:`quantize_run` makes ``RUN/model.int8.onnx`` from the run's FP32 export
(:func:`braintumor.export.onnx_for_run`) with onnxruntime's static quantisation:

* QDQ format, per-channel INT8 weights (7-bit among the recipes tried on a CPU without VNNI, where onnxruntime's
  AVX2 kernels can saturate: :func:`default_recipes`), UINT8 activations, ranges calibrated (:data:`DEFAULT_METHOD`) on
  ``n_calibration`` of the run's own *training* images (``split.csv``), prepared exactly as at prediction time (the
  run's :class:`~braintumor.preprocess.Preprocessor`); onnxruntime's ``quant_pre_process`` (shape inference and
  graph optimisation) first;
* the input check's distance (the ``ood_score`` output) and the softmax-free head stay FP32: only the backbone's
  convolutions and matrix products are quantised;
* the result is measured against FP32 on the run's *validation* images: the share of identical labels and the
  accuracy of each. It is kept (written atomically, recorded in ``metadata.json`` under ``int8``) only when it
  passes the bar (:data:`DEFAULT_BAR`: >= 99.5% identical labels and accuracy within 0.5 point of FP32); otherwise
  nothing is written to the run folder but the measurement itself, and prediction stays FP32;
* **the FP32 guard**: where INT8 alone misses the bar (a binary model with many images near its threshold flips a
  few of them), INT8 is tried once more with FP32 deciding the images that INT8 leaves within a band of a label
  change (:func:`~braintumor.metrics.decision_margin` below ``guard_band``). The band is set on held-out
  *training* images (:data:`GUARD_FACTOR` times the largest INT8-FP32 probability difference there, at least
  :data:`GUARD_MIN`), never on the validation images that judge it. Passing that way, the run keeps INT8 with
  the guard (``guard_band`` and ``guarded_share``, the share of validation images FP32 decided, in ``int8``), and
  prediction loads the FP32 export beside the INT8 one, running it only on those images.

``braintumor export RUN --int8`` runs it; ``predict``/``serve`` use the INT8 file with ``--precision int8`` and, with
``--precision auto`` (default), whenever the run holds a current INT8 file that passed. Grad-CAM always runs on torch.

Example:
    >>> from braintumor.quantize import quantize_run
    >>> res = quantize_run("runs/navoneel")                  # doctest: +SKIP
    >>> res.passed, round(res.label_agreement, 3)            # doctest: +SKIP
    (True, 1.0)
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import RunError, UsageError

#: The INT8 file inside a run folder.
INT8_FILE = "model.int8.onnx"
#: When an INT8 model may replace FP32: share of identical labels on the validation split, and the largest accuracy
#: drop (absolute) against FP32 there.
DEFAULT_BAR = {"min_label_agreement": 0.995, "max_accuracy_drop": 0.005}
#: Calibration images (from the run's training split).
DEFAULT_CALIBRATION = 300
#: How activation ranges are calibrated: onnxruntime's histogram ``percentile`` (99.999th, the rare extreme values
#: clipped) rather than ``minmax``. On the five Navoneel CV fold runs (135 calibration images each) it brought INT8
#: closer to FP32 in every fold, judged on 600 images of another set (Nickparvar Training, unlabelled here): mean
#: absolute probability difference 0.0156 -> 0.0148 on average, identical labels 98.9% -> 99.0%; calibrating takes
#: about four times longer (33 s instead of 8 s for those runs).
DEFAULT_METHOD = "percentile"
#: The FP32 guard's band: this many times the largest INT8-FP32 probability difference on held-out training images,
#: at least :data:`GUARD_MIN` and at most :data:`GUARD_MAX` (a band of 0.5 would send every image to FP32).
GUARD_FACTOR = 1.5
GUARD_MIN = 0.02
GUARD_MAX = 0.3


@dataclass
class QuantizeResult:
    """What :func:`quantize_run` measured and decided (also stored in ``metadata.json`` as ``int8``)."""

    passed: bool
    label_agreement: float
    fp32_accuracy: float | None
    int8_accuracy: float | None
    n_validation: int
    n_calibration: int
    max_abs_diff: float
    bar: dict = field(default_factory=lambda: dict(DEFAULT_BAR))
    recipe: str = "all"
    method: str = DEFAULT_METHOD
    selection: dict = field(default_factory=dict)
    n_selection: int = 0
    path: str | None = None
    size_bytes: int | None = None
    seconds: float = 0.0
    reason: str = ""
    #: INT8 alone, before any guard: identical labels and accuracy on the validation images
    raw_label_agreement: float | None = None
    raw_int8_accuracy: float | None = None
    #: the FP32 guard (0: none): images whose INT8 decision margin is below it are decided by FP32
    guard_band: float = 0.0
    #: share of the validation images the guard sent to FP32 (``None``: no guard)
    guarded_share: float | None = None
    #: whether the CPU that made and checked the copy has VNNI (:func:`cpu_has_vnni`; ``None``: unknown). Without
    #: VNNI 8-bit results drift further from FP32, so a copy checked on a VNNI CPU is not used on one without
    #: unless asked for (:func:`braintumor.backends.load_predictor`).
    cpu_vnni: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Batches:
    """onnxruntime's CalibrationDataReader over prepared, normalised images (float32 NCHW)."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 16):
        batch = max(1, min(batch, len(x)))
        # Whole batches only: onnxruntime's histogram calibrators (percentile, entropy) stack batch outputs.
        self.x, self.name, self.batch, self.i = x[: len(x) // batch * batch], input_name, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        out = {self.name: self.x[self.i:self.i + self.batch]}
        self.i += self.batch
        return out

    def rewind(self):
        self.i = 0


def _excluded_nodes(model_path: Path) -> list[str]:
    """Nodes that stay FP32: everything the ``ood_score`` output depends on beyond the backbone's pooled features
    (the input check's distance is a whitening product whose scale INT8 would distort)."""
    import onnx

    from .export import OOD_OUTPUT

    graph = onnx.load(str(model_path), load_external_data=False).graph
    if OOD_OUTPUT not in {o.name for o in graph.output}:
        return []
    producers = {out: node for node in graph.node for out in node.output}
    logits_deps: set[str] = set()
    stack = ["logits"]
    while stack:  # every node the logits need: shared with the check up to the pooled features
        node = producers.get(stack.pop())
        if node is None or node.name in logits_deps:
            continue
        logits_deps.add(node.name)
        stack.extend(node.input)
    excluded, stack, seen = [], [OOD_OUTPUT], set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name not in logits_deps:
            excluded.append(node.name)
            stack.extend(node.input)
    return excluded


#: The quantisation recipes tried by :func:`quantize_run` (the one closest to FP32 on held-out *training* images is
#: kept): every Conv/Gemm in INT8, or the same with the first convolution and the classifier head left in FP32
#: (the layers most sensitive to 8-bit rounding: raw intensities in, the decision out).
RECIPES = ("all", "keep-ends")
#: The same recipes with 7-bit weights (onnxruntime's ``reduce_range``). Without VNNI, onnxruntime's U8S8 kernels
#: add pairs of 8-bit products in 16-bit registers (AVX2 ``vpmaddubsw``), which can saturate; 7-bit weights cannot.
#: :func:`quantize_run` tries them too on such a CPU (:func:`cpu_has_vnni`).
RECIPES_7BIT = ("all-7bit", "keep-ends-7bit")


def cpu_has_vnni() -> bool | None:
    """Whether this CPU has 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI); ``None``: unknown (no
    ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}) if flags else None


def default_recipes() -> tuple[str, ...]:
    """The recipes :func:`quantize_run` tries here: :data:`RECIPES`, plus :data:`RECIPES_7BIT` on a CPU without
    VNNI (or one whose flags cannot be read)."""
    return RECIPES if cpu_has_vnni() else RECIPES + RECIPES_7BIT


def _end_nodes(model_path: Path) -> list[str]:
    """The first convolution (it reads the normalised image) and the matrix products of the head (after the last
    convolution) of a braintumor export."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if not convs:
        return []
    last_conv = max(i for i, n in enumerate(graph.node) if n.op_type == "Conv")
    head = [n.name for n in graph.node[last_conv + 1:] if n.op_type in ("Gemm", "MatMul")]
    return [convs[0].name, *head]


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
                  per_channel: bool = True, method: str = DEFAULT_METHOD, recipe: str = "all") -> Path:
    """Statically quantise an FP32 ONNX file (QDQ, INT8 weights per channel, UINT8 activations).

    Args:
        fp32_path: the FP32 model (a braintumor export: input ``input``, output ``logits``).
        out_path: where the INT8 model goes (written atomically; its ``metadata_props`` are the FP32 file's plus
            ``braintumor.precision = int8``).
        calibration: normalised images ``(N, 3, S, S)`` float32 for the activation ranges.
        method: ``minmax``, ``percentile`` or ``entropy`` (onnxruntime's calibration methods).
        recipe: one of :data:`RECIPES` or :data:`RECIPES_7BIT`.

    Raises:
        UsageError: onnxruntime's quantisation tools are missing, or the model cannot be quantised.
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise UsageError(f"INT8 needs onnx and onnxruntime ({exc}): pip install 'braintumor[onnx]'") from None
    from .export import INPUT_NAME
    from .rundir import atomic_write_bytes

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise UsageError(f"calibration method must be {', '.join(methods)}, got '{method}'")
    if recipe not in RECIPES + RECIPES_7BIT:
        raise UsageError(f"quantisation recipe must be one of {', '.join(RECIPES + RECIPES_7BIT)}, got '{recipe}'")
    seven_bit = recipe.endswith("-7bit")
    recipe_layers = recipe.removesuffix("-7bit")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with tempfile.TemporaryDirectory(prefix="bt-int8-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            excluded = _excluded_nodes(pre) + (_end_nodes(pre) if recipe_layers == "keep-ends" else [])
            # onnxruntime's histogram calibrators print progress lines to stdout: keep them out of our output
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(q), _Batches(calibration.astype(np.float32), INPUT_NAME),
                                quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=seven_bit,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=methods[method], nodes_to_exclude=excluded,
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantiser raises many types
            raise UsageError(f"{fp32_path}: cannot be quantised to INT8 ({' '.join(str(exc).split())[:200]})"
                             ) from None
        model = onnx.load(str(q))
        props = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        props["braintumor.precision"] = "int8"
        props["braintumor.int8_recipe"] = recipe
        del model.metadata_props[:]
        for k, v in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        atomic_write_bytes(out_path, lambda fh: fh.write(model.SerializeToString()))
    return out_path


def _split_images(run_root: Path, pre, classes: list[str], subset: str, limit: int, seed: int = 0):
    """Prepared images (uint8, ``(N, S, S, 3)``) and class indices of one side of the run's ``split.csv``."""
    from .data.cache import load_images
    from .data.split import read_split_file

    rows = [r for r in read_split_file(run_root) if (r["subset"] == "train") == (subset == "train")
            and r["label"] in classes]
    order = np.random.default_rng(seed).permutation(len(rows))[:limit]
    rows = [rows[i] for i in order]
    loaded = load_images([r["path"] for r in rows], pre)
    y = np.array([classes.index(rows[i]["label"]) for i in loaded.kept], dtype=np.int64)
    return loaded.images, y


def quantize_run(run_dir: str | Path, *, n_calibration: int = DEFAULT_CALIBRATION, bar: dict | None = None,
                 method: str = DEFAULT_METHOD, recipes: tuple[str, ...] | None = None, n_select: int = 100,
                 notice=None) -> QuantizeResult:
    """Make, measure and (if it passes) keep ``RUN/model.int8.onnx``; record the result in ``metadata.json``.

    Each of ``recipes`` (default :func:`default_recipes`) is calibrated on ``n_calibration`` training images; the
    one whose probabilities are closest to FP32's (mean absolute difference) on ``n_select`` *other* training images
    is kept, and only then measured on the validation split against the bar: the validation images never choose
    anything.

    Returns:
        the measurement and decision (``passed``); when it did not pass, ``reason`` says why and no INT8 file is
        left in the run folder (an older one is removed: it would no longer match).

    Raises:
        RunError: not a finished run folder, or no readable image in its ``split.csv``.
        UsageError: the model cannot be quantised (onnxruntime's message).
    """
    from .export import onnx_for_run
    from .rundir import RunDir

    t0 = time.time()
    run = RunDir(run_dir)
    bar = {**DEFAULT_BAR, **(bar or {})}
    recipes = tuple(recipes) if recipes else default_recipes()
    fp32 = onnx_for_run(run.root)  # loads the torch model only when it must export
    if fp32.path is None or fp32.path.parent.resolve() != run.root.resolve():
        raise RunError(f"{run.root}: the run folder is not writable (its FP32 export went to {fp32.path})")
    pre, classes = fp32.preprocessor, list(fp32.classes)
    train_x, _ = _split_images(run.root, pre, classes, "train", n_calibration + n_select)
    n_sel = min(n_select, len(train_x) // 3)  # held-out training images: choose the recipe, set the guard's band
    calib, select = train_x[n_sel:], train_x[:n_sel]
    val, vy = _split_images(run.root, pre, classes, "val", 100_000)
    if not len(calib) or not len(val):
        raise RunError(f"{run.root}: no readable training or validation image listed in split.csv "
                       "(moved data folder?): INT8 needs both, to calibrate and to check")
    if notice:
        notice(f"calibrating INT8 on {len(calib)} training image(s), checking on {len(val)} validation image(s)")
    target = run.root / INT8_FILE
    # one candidate file per recipe (dot-named, removed below): the best is kept without quantising it again
    candidates = {r: run.root / f".{INT8_FILE}.candidate-{r}" for r in recipes}
    try:
        from .export import OnnxPredictor
        from .metrics import decision_margin

        calib_x = pre.normalise(calib).numpy()
        scores: dict[str, float] = {}
        largest: dict[str, float] = {}
        ref = fp32.proba_prepared(select) if n_sel else None
        for recipe in recipes:
            quantize_onnx(fp32.path, candidates[recipe], calib_x, method=method, recipe=recipe)
            if ref is None:
                break
            diff = np.abs(OnnxPredictor(candidates[recipe]).proba_prepared(select) - ref)
            scores[recipe], largest[recipe] = float(diff.mean()), float(diff.max())
        chosen = min(scores, key=scores.get) if len(scores) > 1 else recipes[0]
        tmp_target = candidates[chosen]
        int8 = OnnxPredictor(tmp_target)
        p32 = fp32.proba_prepared(val)
        p8 = int8.proba_prepared(val)
        l32, names = np.asarray(fp32.labels_from_proba(p32)), np.asarray(classes)[np.asarray(vy)]
        acc32 = float((l32 == names).mean())

        def judge(p: np.ndarray) -> tuple[float, float, bool]:
            """Identical labels and accuracy of INT8 probabilities ``p`` against FP32's, and the bar's verdict."""
            l8 = np.asarray(fp32.labels_from_proba(p))
            agree, acc8 = float((l32 == l8).mean()), float((l8 == names).mean())
            return agree, acc8, (agree >= bar["min_label_agreement"]
                                 and acc32 - acc8 <= bar["max_accuracy_drop"] + 1e-12)

        raw_agree, raw_acc8, passed = judge(p8)
        agree, acc8, band, guarded = raw_agree, raw_acc8, 0.0, None
        if not passed and chosen in largest:  # INT8 alone falls short: FP32 decides the images near a label change
            band = round(float(min(GUARD_MAX, max(GUARD_MIN, GUARD_FACTOR * largest[chosen]))), 4)
            near = decision_margin(p8, int8.threshold, int8.positive_index) < band
            agree, acc8, passed = judge(np.where(near[:, None], p32, p8))
            guarded = round(float(near.mean()), 4)
            if not passed:
                band, guarded = 0.0, None
                agree, acc8 = raw_agree, raw_acc8
        reason = "" if passed else (
            f"INT8 agrees with FP32 on {agree:.1%} of {len(val)} validation labels "
            f"(bar {bar['min_label_agreement']:.1%}), accuracy {acc8:.3f} vs {acc32:.3f} "
            f"(largest drop allowed {bar['max_accuracy_drop']:.3f})"
            + (", also with FP32 deciding the images near a label change" if chosen in largest else ""))
        res = QuantizeResult(passed, agree, acc32, acc8, len(val), len(calib), float(np.abs(p32 - p8).max()), bar,
                             recipe=chosen, method=method, selection={k: round(v, 5) for k, v in scores.items()},
                             n_selection=n_sel, reason=reason, raw_label_agreement=raw_agree,
                             raw_int8_accuracy=raw_acc8, guard_band=band, guarded_share=guarded)
        if passed:
            tmp_target.replace(target)
            res.path, res.size_bytes = INT8_FILE, target.stat().st_size
        else:
            target.unlink(missing_ok=True)
    finally:
        for path in candidates.values():
            path.unlink(missing_ok=True)
    res.seconds = round(time.time() - t0, 1)
    res.cpu_vnni = cpu_has_vnni()
    meta = run.read_metadata()
    meta["int8"] = res.to_dict()
    run.write_json(run.metadata, meta)
    from .model_card import refresh_model_card

    refresh_model_card(run.root)  # the card served and exported says which precision answers
    return res


def int8_for_run(run_dir: str | Path):
    """The run's INT8 :class:`~braintumor.export.OnnxPredictor` when ``RUN/model.int8.onnx`` passed its check and
    still matches the run (same checkpoint and settings as the FP32 export it was made from); else ``None``."""
    from .errors import BrainTumorError
    from .export import OnnxPredictor, _prediction_settings, stamp_matches

    root = Path(run_dir)
    path = root / INT8_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads((root / "metadata.json").read_text())
        info = meta.get("int8") if isinstance(meta, dict) else None
        if not isinstance(info, dict) or info.get("passed") is not True:
            return None
        pred = OnnxPredictor(path)
    except (OSError, ValueError, BrainTumorError):
        return None
    if _prediction_settings(pred.metadata) != _prediction_settings(meta):
        return None  # the run's classes, preprocessing, temperature or threshold changed since
    stamp, ckpt = pred.metadata.get("checkpoint"), root / "checkpoints" / "best.pt"
    if not isinstance(stamp, dict) or not ckpt.is_file() or not stamp_matches(stamp, ckpt):
        return None
    band = info.get("guard_band")
    if isinstance(band, (int, float)) and not isinstance(band, bool) and 0 < band <= GUARD_MAX:
        # INT8 passed its check only with FP32 deciding the images near a label change: it needs the FP32 export
        try:
            guard = OnnxPredictor(root / "model.onnx")
        except (OSError, ValueError, BrainTumorError):
            return None
        if _prediction_settings(guard.metadata) != _prediction_settings(meta) or \
                guard.metadata.get("checkpoint") != stamp:
            return None
        pred.guard, pred.guard_band = guard, float(band)
    return pred
