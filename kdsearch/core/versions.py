"""The versions that matter for reproducing a result or a crash (the model card and the crash log carry them)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("kdsearch", "torch", "torchvision", "timm", "ray", "optuna", "mlflow", "scikit-learn", "pydantic", "onnx")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
