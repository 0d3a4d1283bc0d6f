"""Heatmaps from a classifier: Grad-CAM and Grad-CAM++ (MONAI) and gradient-free occlusion sensitivity.

Every function returns ``float32`` maps ``(N, S, S)`` at the model-input resolution, normalised per image to
``[0, 1]`` with HIGH = IMPORTANT (MONAI's default post-processing maps the largest value to 0; it is replaced here
by an explicit min-max scaling that keeps the orientation).

The gradient pass differentiates from the target layer's output only (a fresh leaf tensor: nothing below the
layer is back-propagated through) and temporarily switches every parameter's ``requires_grad`` off, so it works
on checkpoints trained with a frozen backbone, accumulates no parameter gradients, and restores the model
(parameter flags, train/eval mode, hooks) afterwards. It runs with gradients enabled even when called under
``torch.no_grad()`` or ``torch.inference_mode()``.

Example:
    >>> import torch
    >>> from braintumor.models import build_model
    >>> from braintumor.explain.saliency import cam_maps
    >>> model = build_model("cnn", 2).eval()
    >>> cam_maps(model, torch.randn(2, 3, 64, 64), "backbone", [1, 0]).shape
    (2, 64, 64)
"""

from __future__ import annotations

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
METHODS = ("gradcam", "gradcam++", "occlusion")


def check_method(method: str) -> str:
    m = method.lower().replace("_", "").replace("-", "")
    m = {"gradcam": "gradcam", "gradcampp": "gradcam++", "gradcam++": "gradcam++", "occlusion": "occlusion"}.get(m)
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
def gradient_pass(model: nn.Module, layer: str):
    """Temporarily ready ``model`` for one explanation pass; restore everything afterwards.

    Inside: gradients enabled (also under ``no_grad``/``inference_mode``), every parameter's ``requires_grad``
    off (the target layer's output carries the gradient), eval mode. On exit: parameter flags, train/eval mode
    and the target module's hooks and ``inplace`` flag are put back.
    """
    target = _find_module(model, layer)
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    saved_hooks = (dict(target._forward_hooks), dict(target._backward_hooks),
                   getattr(target, "_is_full_backward_hook", None))
    had_inplace = "inplace" in target.__dict__
    inplace = target.__dict__.get("inplace")
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            yield target
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
        target._forward_hooks.clear()
        target._forward_hooks.update(saved_hooks[0])
        target._backward_hooks.clear()
        target._backward_hooks.update(saved_hooks[1])
        if saved_hooks[2] is not None or hasattr(target, "_is_full_backward_hook"):
            target._is_full_backward_hook = saved_hooks[2]
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


def cam_maps(model: nn.Module, x: torch.Tensor, layer: str, class_idx: Sequence[int],
             method: str = "gradcam") -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) maps of ``class_idx[i]`` for each normalised input ``x[i]``.

    Args:
        model: a classifier returning logits.
        x: normalised input batch ``(N, 3, S, S)`` on the model's device.
        layer: dotted name of the target module (the registry's ``target_layer``).
        class_idx: the class to explain, one per image.
        method: ``"gradcam"`` or ``"gradcam++"``.

    Returns:
        ``float32`` ``(N, S, S)`` in ``[0, 1]``, high = important.
    """
    method = check_method(method)
    cls = {"gradcam": GradCAM, "gradcam++": GradCAMpp}.get(method)
    if cls is None:
        raise UsageError(f"cam_maps computes gradcam or gradcam++, not '{method}'")
    if len(class_idx) != len(x):
        raise ValueError("one class index per image")
    with gradient_pass(model, layer):
        hooks = _PerSampleHooks(model, layer)  # the backward pass starts at the layer (see the class)
        cam = cls(nn_module=hooks, target_layers=layer, upsampler=_upsampler, postprocessing=_identity)
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
