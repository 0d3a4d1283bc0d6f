"""braintumor: train, evaluate, explain and serve brain-MRI tumour classifiers.

The public API, importable from the package::

    import braintumor as bt
    result = bt.train(bt.TrainConfig(data_dir="data/phantoms", model="cnn", img_size=64), out="runs/demo")
    predictor = bt.load_run(result.run_dir)

Heavy modules (torch, MONAI) are imported on first use, so ``import braintumor`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TrainConfig": ("braintumor.config", "TrainConfig"),
    "train": ("braintumor.train", "train"),
    "TrainResult": ("braintumor.train", "TrainResult"),
    "evaluate": ("braintumor.evaluate", "evaluate"),
    "EvaluationResult": ("braintumor.evaluate", "EvaluationResult"),
    "Predictor": ("braintumor.inference", "Predictor"),
    "load_run": ("braintumor.inference", "load_run"),
    "Preprocessor": ("braintumor.preprocess", "Preprocessor"),
    "discover": ("braintumor.data.discover", "discover"),
    "load_folder": ("braintumor.data.discover", "discover"),
    "read_image": ("braintumor.data.read", "read_image"),
    "write_phantoms": ("braintumor.data.synthetic", "write_phantoms"),
    "available_models": ("braintumor.models.registry", "available_models"),
    "build_model": ("braintumor.models.registry", "build_model"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'braintumor' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
