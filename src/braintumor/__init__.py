"""braintumor: train, evaluate, explain and serve brain-MRI tumour classifiers.

The public API, importable from the package (the ``braintumor`` command is a thin layer over it)::

    import braintumor as bt

    bt.write_phantoms("data/phantoms", n=120, size=64)            # or your own folder: data/<class>/<images>
    config = bt.TrainConfig(data_dir="data/phantoms", img_size=64, epochs_frozen=2, epochs=2)
    result = bt.train(config, out="runs/quickstart")               # EfficientNet-Lite0, ImageNet weights
    print(result)                                                  # validation metrics of the best checkpoint
    predictor = bt.load_run("runs/quickstart")
    image = bt.load_folder("data/phantoms").paths[-1]              # the last file of the last class: a tumour
    bt.explain(predictor, image).figure().savefig("gradcam.png")   # image | Grad-CAM | overlay

========================  ===============================================================================
data                      :func:`load_folder` (= :func:`discover`), :func:`read_image`, :func:`write_phantoms`,
                          :func:`audit`
training                  :class:`TrainConfig`, :func:`train` -> :class:`TrainResult`, :func:`cv` ->
                          :class:`CVResult`, :func:`available_models`, :func:`build_model`
evaluation                :func:`evaluate` -> :class:`EvaluationResult`
prediction                :func:`load_run` / :class:`Predictor`, :func:`load_predictor` (run folder or ONNX),
                          :class:`Preprocessor`
explanation               :func:`explain` -> :class:`Explanation`
deployment                :func:`export_onnx` -> :class:`OnnxPredictor`
========================  ===============================================================================

Heavy modules (torch, MONAI) are imported on first use, so ``import braintumor`` stays fast. The modules behind
the functions are named for what they hold (:mod:`braintumor.training`, :mod:`braintumor.evaluation`,
:mod:`braintumor.crossval`, :mod:`braintumor.explanation`), so no public function shares its name with a module.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

#: Public name -> (module, attribute). Everything here is documented with an example (tests/test_api.py).
_LAZY = {
    # data
    "load_folder": ("braintumor.data.discover", "discover"),
    "discover": ("braintumor.data.discover", "discover"),
    "read_image": ("braintumor.data.read", "read_image"),
    "write_phantoms": ("braintumor.data.synthetic", "write_phantoms"),
    "audit": ("braintumor.data.audit", "audit"),
    # training
    "TrainConfig": ("braintumor.config", "TrainConfig"),
    "train": ("braintumor.training", "train"),
    "TrainResult": ("braintumor.training", "TrainResult"),
    "cv": ("braintumor.crossval", "cv"),
    "CVResult": ("braintumor.crossval", "CVResult"),
    "available_models": ("braintumor.models.registry", "available_models"),
    "build_model": ("braintumor.models.registry", "build_model"),
    # evaluation
    "evaluate": ("braintumor.evaluation", "evaluate"),
    "EvaluationResult": ("braintumor.evaluation", "EvaluationResult"),
    # prediction
    "Predictor": ("braintumor.inference", "Predictor"),
    "load_run": ("braintumor.inference", "load_run"),
    "load_predictor": ("braintumor.backends", "load_predictor"),
    "Preprocessor": ("braintumor.preprocess", "Preprocessor"),
    # explanation
    "explain": ("braintumor.explanation", "explain"),
    "Explanation": ("braintumor.explanation", "Explanation"),
    # deployment
    "export_onnx": ("braintumor.export", "export_onnx"),
    "OnnxPredictor": ("braintumor.export", "OnnxPredictor"),
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

