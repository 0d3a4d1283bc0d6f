"""Model registry and architectures."""

from .registry import Classifier, ModelSpec, available_models, build_model, get_spec, register

__all__ = ["Classifier", "ModelSpec", "available_models", "build_model", "get_spec", "register"]
