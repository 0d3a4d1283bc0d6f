"""Modules loaded on first use, so that prediction on onnxruntime never imports torch.

``import torch`` costs about a second of start-up, more than a one-image ``predict`` on onnxruntime spends on
everything else. The modules on that path (:mod:`braintumor.inference`, :mod:`braintumor.export`,
:mod:`braintumor.ood`) name torch through :data:`torch`, which imports it only when a torch attribute is first used
(training, Grad-CAM, the torch backend, an export); their gradient-free methods use :func:`inference_mode` and
:func:`no_grad`, which look torch up at call time instead of at import.

Example:
    >>> import sys
    >>> from braintumor.lazy import LazyModule
    >>> json = LazyModule("json")         # nothing imported yet
    >>> json.dumps([1])
    '[1]'
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable


class LazyModule(types.ModuleType):
    """Stands for the module ``name`` and imports it on the first attribute looked up (then Python's own cache)."""

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self.__name__), attr)


#: torch, imported on first use.
torch = LazyModule("torch")


def _under(context: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with getattr(torch, context)():
            return fn(*args, **kwargs)

    return wrapper


def inference_mode(fn: Callable) -> Callable:
    """``@torch.inference_mode()``, with torch imported when ``fn`` is called rather than when it is defined."""
    return _under("inference_mode", fn)


def no_grad(fn: Callable) -> Callable:
    """``@torch.no_grad()``, with torch imported when ``fn`` is called rather than when it is defined."""
    return _under("no_grad", fn)
