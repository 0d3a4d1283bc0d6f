"""Heatmaps from a classifier: gradient CAMs (Grad-CAM, Grad-CAM++, HiResCAM, LayerCAM) and occlusion.

Every function returns ``float32`` maps ``(N, S, S)`` at the model-input resolution, normalised per image to
``[0, 1]`` with HIGH = IMPORTANT (MONAI's default post-processing maps the largest value to 0; it is replaced here
by an explicit min-max scaling that keeps the orientation).

Methods (``--method``), for activations ``A`` (channels ``k``) of a layer and the gradient ``G = dy_c / dA`` of the
explained class score:

* ``gradcam`` (Selvaraju et al. 2017): ``ReLU(sum_k mean(G_k) A_k)`` at the registry's target layer (the backbone
  output, stride 32 for the pretrained nets: a 7x7 grid at 224 px). MONAI's implementation.
* ``gradcam++`` (Chattopadhay et al. 2018): Grad-CAM with higher-order channel weights. MONAI's implementation.
* ``hirescam`` (Draelos & Carin 2020): ``ReLU(sum_k G_k * A_k)``, element-wise, at the target layer: the map
  the class score actually sums (no spatial averaging of the gradient), same grid as Grad-CAM. When the target
  layer feeds global average pooling and a linear head (every registered model), the gradient is the same at
  every position and HiResCAM equals Grad-CAM exactly; it differs at inner layers (``layer_maps``).
* ``layercam`` (Jiang et al. 2021): ``ReLU(sum_k ReLU(G_k) * A_k)`` element-wise, computed at every backbone feature
  map of stride >= 8 (:attr:`~braintumor.models.ModelSpec.feature_layers`: 28x28, 14x14 and 7x7 at 224 px for
  EfficientNet-Lite0), each map upsampled to the input and min-max normalised, then fused by their geometric mean
  (:func:`fuse_maps` ``"product"``): a pixel is important where every scale agrees. The paper fuses by the
  element-wise maximum (after a monotone ``tanh`` rescaling); on real outlines (figshare T1-CE, a 3-class
  EfficientNet-Lite0, ``benchmarks/README.md``) the maximum is dominated by the coarse 7x7 map and kept its peak in
  the tumour for 14% of slices, the geometric mean for 34%, with deletion AUC below a random map's (0.57 vs 0.68)
  and a randomisation correlation of 0.28 (max: 0.79). Stride-4 maps are left out: adding them lowered the pointing
  game (0.29), and alone they light up edges (Dice 0.16 at the best threshold vs 0.25). Where the model has no
  feature map of stride >= 8 apart from its last one (the ``cnn``, whose last map is already stride 4), it is the
  single-layer LayerCAM of the target layer.
* ``layercam-last``: single-layer LayerCAM at the target layer (Grad-CAM's grid).
* ``layercam-tta``: ``layercam`` with test-time augmentation: the *original* image prepared at
  :data:`TTA_SCALE` times the model's side (rounded up to a multiple of 32: 352 px for a 224-px model; the same
  crop, a finer resize, finer feature maps) and its mirror image, the two maps summed and resized to the model's
  side. It needs the original images (:func:`braintumor.explanation.heatmaps` ``originals``) and costs about five
  times ``layercam``. On held-out figshare T1-CE slices it moved the strict pointing game 0.543 -> 0.587
  (a 184-slice block); on all 798 figshare_dev slices never used for training or choices it points 0.617-0.674
  (``benchmarks/README.md``).
* ``occlusion``: gradient-free; the drop of the class probability when a patch is blurred.
* ``seg``: not a saliency method: the probability map of a tumour-map decoder trained with masks (a run trained
  with ``--masks``); dispatched by :func:`braintumor.explanation.heatmaps`.

The gradient pass differentiates from the lowest tapped layer's output only (a fresh leaf tensor: nothing below
that layer is back-propagated through; the outputs of higher tapped layers are caught on the way with
``torch.autograd.grad``) and temporarily switches every parameter's ``requires_grad`` off, so it works on
checkpoints trained with a frozen backbone, accumulates no parameter gradients, and restores the model (parameter
flags, train/eval mode, hooks) afterwards. It runs with gradients enabled even when called under
``torch.no_grad()`` or ``torch.inference_mode()``. Class scores are per sample: image ``i`` of a batch explains
its own ``class_idx[i]``.

Example:
    >>> import torch
    >>> from braintumor.models import build_model
    >>> from braintumor.explanation.saliency import cam_maps
    >>> model = build_model("cnn", 2).eval()
    >>> cam_maps(model, torch.randn(2, 3, 64, 64), "backbone", [1, 0]).shape
    (2, 64, 64)
    >>> cam_maps(model, torch.randn(2, 3, 64, 64), ["backbone.3", "backbone"], [1, 0], "layercam").shape
    (2, 64, 64)
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp
from monai.visualize.class_activation_maps import ModelWithHooks
from scipy import ndimage
from torch import nn

from ..errors import UsageError

#: ``--method`` choices.
METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "layercam-last", "layercam-tta", "occlusion", "seg")
#: The method ``explain`` uses unless told otherwise (CLI ``--method``, the Python API). Chosen on real outlines
#: (``benchmarks/README.md``): the best strict pointing game of the faithful methods (deletion AUC below a random
#: map's) that pass the randomisation check, within 150 ms per image at 224 px. ``layercam-tta`` was chosen over
#: other test-time augmentations on 121 validation slices (0.760 against 0.694 for ``layercam``) and then measured on
#: 184 held-out figshare T1-CE slices of other patients: 0.587 strict (``layercam`` 0.543), deletion AUC 0.519
#: (random 0.605), randomisation |Spearman| 0.21, ~95 ms per image; on all 798 such slices 0.617 (the classifier
#: validation chose; 95% interval over patient blocks 0.51-0.72), deletion 0.445 (random 0.626). It needs the
#: original images; calls that only have prepared ones (:func:`~braintumor.explanation.heatmaps`) name another
#: method.
DEFAULT_METHOD = "layercam-tta"
#: ``layercam-tta``: the larger side, as a multiple of the model's (see :func:`tta_side`).
TTA_SCALE = 1.5
#: Methods computed by :func:`cam_maps` from one gradient pass.
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "layercam-last")
#: Per-layer rules :func:`layer_maps` knows (``gradcam``: spatially averaged gradient weights).
LAYER_RULES = ("gradcam", "hirescam", "layercam")
#: How :func:`fuse_maps` combines per-layer maps.
FUSIONS = ("max", "mean", "product")
#: Multi-layer CAMs fuse the feature maps of at least this stride (finer ones respond to edges: the skull).
FUSION_MIN_STRIDE = 8

_ALIASES = {
    "gradcam": "gradcam", "gradcampp": "gradcam++", "gradcam++": "gradcam++", "gradcamplusplus": "gradcam++",
    "hirescam": "hirescam", "hires": "hirescam",
    "layercam": "layercam", "layercamfused": "layercam", "layercammulti": "layercam",
    "layercamlast": "layercam-last", "layercamsingle": "layercam-last",
    "layercamtta": "layercam-tta", "tta": "layercam-tta",
    "occlusion": "occlusion", "occ": "occlusion",
    "seg": "seg", "segmentation": "seg", "tumourmap": "seg", "tumormap": "seg", "decoder": "seg",
}


def tta_side(img_size: int) -> int:
    """The input side ``layercam-tta`` prepares images at: :data:`TTA_SCALE` times ``img_size``, rounded up to a
    multiple of 32 (the backbones' largest stride)."""
    return int(-(-img_size * TTA_SCALE // 32) * 32)


def check_method(method: str) -> str:
    """The canonical name of ``method`` (case, ``-``, ``_`` and spaces ignored; aliases such as ``gradcampp``,
    ``layercam_fused``, ``tumour-map``); raises :class:`UsageError` for an unknown one."""
    m = str(method).lower().replace("_", "").replace("-", "").replace(" ", "")
    m = _ALIASES.get(m)
    if m is None:
        raise UsageError(f"unknown explanation method '{method}'; choose one of: {', '.join(METHODS)}")
    return m


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to ``[0, 1]``, high = important; constant or non-finite maps become 0.

    "Constant" is relative to the map's own magnitude (a span below ``1e-6`` of its largest absolute value), not
    an absolute threshold: the raw maps of a weight-randomised network can be ``1e-7`` in size and still carry a
    full spatial pattern, which an absolute cut-off would flatten to 0 (and a flat map then scores a spurious
    correlation of 0 in the randomisation check).
    """
    maps = np.nan_to_num(np.asarray(maps, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(axis=1, keepdims=True)
    hi = flat.max(axis=1, keepdims=True)
    span = hi - lo
    ok = (span > 0) & (span > 1e-6 * np.maximum(np.abs(lo), np.abs(hi)))
    out = np.where(ok, (flat - lo) / np.where(ok, span, 1.0), 0.0)
    return out.reshape(maps.shape).astype(np.float32)


class _PerSampleHooks(ModelWithHooks):
    """MONAI's hook wrapper with a per-sample class score, differentiating from the target layer only.

    ``ModelWithHooks.class_score`` indexes ``logits[:, class_idx]``, which for a batch with one class per image
    gives an ``(N, N)`` block whose sum mixes every image's target; Grad-CAM++ then broadcasts that score along
    the wrong axis. Here the score is ``logits[i, class_idx[i]]`` shaped ``(N, 1, 1, 1)``.

    The target layer's output is replaced by a fresh leaf tensor (a forward hook) whose gradient is caught by a
    tensor hook: the backward pass stops there, nothing below the layer is differentiated (same maps, ~2.5x less
    CPU), and no module backward hook is needed (PyTorch's full backward hooks warn when the module's inputs do
    not require gradients).
    """

    def __init__(self, nn_module: nn.Module, layer: str):
        super().__init__(nn_module, layer, register_forward=False, register_backward=False)
        self.register_forward = self.register_backward = True  # what __call__ returns; the hooks are ours
        _find_module(nn_module, layer).register_forward_hook(self._leaf_hook(layer))

    def _leaf_hook(self, name: str):
        def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
            leaf = output.detach().requires_grad_(True)
            leaf.register_hook(lambda grad: self.gradients.__setitem__(name, grad))
            self.activations[name] = leaf
            return leaf

        return hook

    def class_score(self, logits: torch.Tensor, class_idx) -> torch.Tensor:
        idx = torch.as_tensor(class_idx, device=logits.device).reshape(-1)
        if idx.numel() == 1 and logits.shape[0] > 1:
            idx = idx.expand(logits.shape[0])
        return logits.gather(1, idx.view(-1, 1)).view(-1, 1, 1, 1)


def _find_module(model: nn.Module, name: str) -> nn.Module:
    for n, m in model.named_modules():
        if n == name:
            return m
    raise UsageError(f"target layer '{name}' not found in {type(model).__name__}")


@contextmanager
def gradient_pass(model: nn.Module, layer: str | Sequence[str]):
    """Temporarily ready ``model`` for one explanation pass; restore everything afterwards.

    Inside: gradients enabled (also under ``no_grad``/``inference_mode``), every parameter's ``requires_grad``
    off (a tapped layer's output carries the gradient), eval mode. On exit: parameter flags, train/eval mode and
    each tapped module's hooks and ``inplace`` flag are put back. ``layer``: one dotted module name or several;
    yields the (first) module.
    """
    names = [layer] if isinstance(layer, str) else list(dict.fromkeys(layer))
    targets = [_find_module(model, n) for n in names]
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    saved = []
    for t in targets:
        saved.append((t, dict(t._forward_hooks), dict(t._backward_hooks), getattr(t, "_is_full_backward_hook", None),
                      "inplace" in t.__dict__, t.__dict__.get("inplace")))
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            yield targets[0]
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
        for target, fwd, bwd, full, had_inplace, inplace in saved:
            target._forward_hooks.clear()
            target._forward_hooks.update(fwd)
            target._backward_hooks.clear()
            target._backward_hooks.update(bwd)
            if full is not None or hasattr(target, "_is_full_backward_hook"):
                target._is_full_backward_hook = full
            if had_inplace:
                target.__dict__["inplace"] = inplace


def _identity(x):
    return x


def upsample_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Grid maps ``(N, 1, h, w)`` -> ``(N, 1, *size)``: bilinear, ``align_corners=False`` (MONAI's default).

    With ``align_corners=False`` cell ``k`` of a stride-``s`` grid lands on input pixel ``(k + 0.5) * s - 0.5``,
    the centre of the ``s`` pixels it pools: right for max-pooling/strided layers (a test checks it against the
    receptive fields of the ``cnn``; its stride-2 5x5 stem is the one half-pixel exception).
    """
    import torch.nn.functional as F  # noqa: N812

    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def _upsampler(size):
    return lambda maps: upsample_maps(maps, size)


def feature_grid(model: nn.Module, layer: str, size: int) -> tuple[int, int]:
    """Spatial size ``(h, w)`` of ``layer``'s output for a ``size`` x ``size`` input: the Grad-CAM grid.

    A Grad-CAM map is this grid bilinearly upsampled to the input, so its peak can only sit on one of ``h * w``
    cell centres, ``size / h`` pixels apart.
    """
    target = _find_module(model, layer)
    seen: list[tuple[int, int]] = []
    handle = target.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return seen[-1]


def _tap(name: str, store: dict[str, torch.Tensor]):
    """Forward hook: keep ``name``'s output for the gradient. The first tapped output on the way up (nothing below
    it requires a gradient) becomes a fresh leaf, so back-propagation stops there; the module returns a copy, so
    an in-place operation further up cannot alter the kept activation."""

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise UsageError(f"layer '{name}' does not return a tensor; it cannot be explained")
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        store[name] = output
        return output.clone()

    return hook


def layer_maps(model: nn.Module, x: torch.Tensor, layers: str | Sequence[str], class_idx: Sequence[int],
               rule: str = "layercam") -> list[torch.Tensor]:
    """Raw (unnormalised, ReLU'd) per-layer class maps ``(N, 1, h, w)`` from ONE forward and backward pass.

    Args:
        model: a classifier returning logits.
        x: normalised input batch ``(N, 3, S, S)``.
        layers: dotted module names (any order; each must return a 4-D tensor).
        class_idx: the class to explain, one per image.
        rule: ``"layercam"`` (``ReLU(sum_k ReLU(G_k) A_k)``), ``"hirescam"`` (``ReLU(sum_k G_k A_k)``) or
            ``"gradcam"`` (``ReLU(sum_k mean(G_k) A_k)``).

    Returns:
        One map per layer, in the order of ``layers``, on the grid of that layer.
    """
    if rule not in LAYER_RULES:
        raise UsageError(f"unknown per-layer rule '{rule}'; choose one of: {', '.join(LAYER_RULES)}")
    names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    if len(class_idx) != len(x):
        raise ValueError("one class index per image")
    acts: dict[str, torch.Tensor] = {}
    with gradient_pass(model, names):
        for n in names:
            _find_module(model, n).register_forward_hook(_tap(n, acts))
        logits = model(x.detach())
        idx = torch.as_tensor(list(class_idx), dtype=torch.long, device=logits.device).view(-1, 1)
        score = logits.gather(1, idx).sum()  # images are independent in eval mode: per-sample gradients
        missing = [n for n in names if n not in acts]
        if missing:
            raise UsageError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
        grads = torch.autograd.grad(score, [acts[n] for n in names], allow_unused=True)
        out = []
        with torch.no_grad():
            for n, g in zip(names, grads, strict=True):
                a = acts[n].detach()
                if a.dim() != 4:
                    raise UsageError(f"layer '{n}' output has shape {tuple(a.shape)}; a CAM needs (N, C, h, w)")
                g = torch.zeros_like(a) if g is None else g.detach()
                if rule == "layercam":
                    m = (g.clamp(min=0) * a).sum(1, keepdim=True)
                elif rule == "hirescam":
                    m = (g * a).sum(1, keepdim=True)
                else:
                    m = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
                out.append(m.clamp(min=0).float())
    return out


def fuse_maps(maps: Sequence[torch.Tensor], size: int | Sequence[int], fusion: str = "max") -> np.ndarray:
    """Upsample per-layer maps ``(N, 1, h, w)`` to ``size``, normalise each to ``[0, 1]`` and combine them.

    ``fusion``: ``"max"`` (element-wise maximum, the LayerCAM paper's fusion), ``"mean"`` or ``"product"``
    (geometric mean, each map floored at ``1e-6``: high only where every layer is high; ``layercam``'s default).
    Returns ``float32`` ``(N, *size)`` in ``[0, 1]``.
    """
    if fusion not in FUSIONS:
        raise UsageError(f"unknown fusion '{fusion}'; choose one of: {', '.join(FUSIONS)}")
    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    ups = np.stack([normalise_maps(upsample_maps(m.float(), size)[:, 0].cpu().numpy()) for m in maps])
    if len(ups) == 1:
        return ups[0]
    if fusion == "max":
        fused = ups.max(axis=0)
    elif fusion == "mean":
        fused = ups.mean(axis=0)
    else:
        fused = np.exp(np.log(np.maximum(ups, 1e-6)).mean(axis=0))
    return normalise_maps(fused)


_GRIDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layer_strides(model: nn.Module, layers: Sequence[str], size: int) -> dict[str, float]:
    """Input pixels per map cell of each layer at a ``size`` x ``size`` input (one probe pass, cached per model)."""
    cache = _GRIDS.setdefault(model, {})
    key = (tuple(layers), int(size))
    if key not in cache:
        seen: dict[str, int] = {}
        handles = [_find_module(model, n).register_forward_hook(
            lambda _m, _i, out, n=n: seen.__setitem__(n, int(out.shape[-2]))) for n in layers]
        was_training = model.training
        try:
            model.eval()
            p = next(model.parameters(), None)
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu"))
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        cache[key] = {n: size / seen[n] for n in layers}
    return cache[key]


def fusion_layers(model: nn.Module, feature_layers: Sequence[str], size: int,
                  min_stride: float = FUSION_MIN_STRIDE) -> list[str]:
    """The layers a multi-layer CAM fuses: those of ``feature_layers`` with a stride of at least ``min_stride``
    (always including the last, the target layer)."""
    layers = list(feature_layers)
    strides = layer_strides(model, layers, size)
    keep = [n for n in layers[:-1] if strides[n] >= min_stride - 1e-6]
    return keep + [layers[-1]]


#: How ``layercam`` fuses its layers (see the module docstring for the measurement behind it).
LAYERCAM_FUSION = "product"


def cam_maps(model: nn.Module, x: torch.Tensor, layer: str | Sequence[str], class_idx: Sequence[int],
             method: str = "gradcam", fusion: str = LAYERCAM_FUSION) -> np.ndarray:
    """Gradient CAM maps of ``class_idx[i]`` for each normalised input ``x[i]``.

    Args:
        model: a classifier returning logits.
        x: normalised input batch ``(N, 3, S, S)`` on the model's device.
        layer: dotted name of the target module (the registry's ``target_layer``) or, for ``layercam``, several
            (fused; see :func:`fusion_layers`). ``gradcam``, ``gradcam++``, ``hirescam`` and ``layercam-last``
            use the last one given.
        class_idx: the class to explain, one per image.
        method: one of :data:`CAM_METHODS`.
        fusion: how ``layercam`` combines several layers (:func:`fuse_maps`).

    Returns:
        ``float32`` ``(N, S, S)`` in ``[0, 1]``, high = important.
    """
    method = check_method(method)
    if method not in CAM_METHODS:
        raise UsageError(f"cam_maps computes {', '.join(CAM_METHODS)}, not '{method}'")
    if len(class_idx) != len(x):
        raise ValueError("one class index per image")
    layers = [layer] if isinstance(layer, str) else list(layer)
    if not layers:
        raise UsageError("no layer to explain")
    size = tuple(x.shape[-2:])
    if method == "layercam":
        return fuse_maps(layer_maps(model, x, layers, class_idx, "layercam"), size, fusion)
    if method in ("hirescam", "layercam-last"):
        rule = "hirescam" if method == "hirescam" else "layercam"
        return fuse_maps(layer_maps(model, x, layers[-1], class_idx, rule), size)
    cls = {"gradcam": GradCAM, "gradcam++": GradCAMpp}[method]
    target = layers[-1]
    with gradient_pass(model, target):
        hooks = _PerSampleHooks(model, target)  # the backward pass starts at the layer (see the class)
        cam = cls(nn_module=hooks, target_layers=target, upsampler=_upsampler, postprocessing=_identity)
        idx = torch.as_tensor(list(class_idx), dtype=torch.long, device=x.device)
        maps = cam(x.detach(), class_idx=idx)
        out = maps.detach().float().cpu().numpy()[:, 0]
    return normalise_maps(out)


def blur_baseline(images: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Strongly blurred copies of ``uint8`` images ``(N, S, S, 3)``: what 'removed' means for occlusion/deletion.

    ``sigma`` defaults to a tenth of the image side.
    """
    images = np.asarray(images)
    s = images.shape[1]
    sigma = float(sigma if sigma is not None else max(1.0, s / 10))
    out = ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="nearest")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def occlusion_maps(predict_proba, images: np.ndarray, class_idx: Sequence[int], patch: int | None = None,
                   stride: int | None = None, sigma: float | None = None, batch_size: int = 64) -> np.ndarray:
    """Occlusion sensitivity: the drop of the target probability when a patch is replaced by its blurred copy.

    A gradient-free cross-check of Grad-CAM. Each pixel gets the mean drop over the patches covering it.

    Args:
        predict_proba: ``uint8 (M, S, S, 3) -> probabilities (M, K)`` (e.g. ``Predictor.proba_prepared``).
        images: prepared ``uint8`` images ``(N, S, S, 3)``.
        class_idx: class to explain, one per image.
        patch, stride: occluding square side and step in pixels (default: ``S // 8`` and half of it).
        sigma: blur of the fill (see :func:`blur_baseline`).

    Returns:
        ``float32`` ``(N, S, S)`` in ``[0, 1]``, high = important.
    """
    images = np.asarray(images)
    n, s = images.shape[0], images.shape[1]
    patch = int(patch or max(4, s // 8))
    stride = int(stride or max(1, patch // 2))
    starts = list(range(0, max(1, s - patch + 1), stride))
    if starts[-1] != s - patch:
        starts.append(max(0, s - patch))
    boxes = [(y, x) for y in starts for x in starts]
    base = blur_baseline(images, sigma)
    p0 = predict_proba(images)
    out = np.zeros((n, s, s), np.float32)
    for i in range(n):
        c = int(class_idx[i])
        drops = np.empty(len(boxes), np.float32)
        for j in range(0, len(boxes), batch_size):
            chunk = boxes[j:j + batch_size]
            batch = np.repeat(images[i:i + 1], len(chunk), axis=0)
            for k, (y, x) in enumerate(chunk):
                batch[k, y:y + patch, x:x + patch] = base[i, y:y + patch, x:x + patch]
            drops[j:j + len(chunk)] = p0[i, c] - predict_proba(batch)[:, c]
        acc = np.zeros((s, s), np.float32)
        cnt = np.zeros((s, s), np.float32)
        for (y, x), d in zip(boxes, drops, strict=True):
            acc[y:y + patch, x:x + patch] += d
            cnt[y:y + patch, x:x + patch] += 1
        out[i] = acc / np.maximum(cnt, 1)
    return normalise_maps(out)
