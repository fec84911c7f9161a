"""Old import paths kept for one release after a module moved (docs/architecture.md lists them)."""

from __future__ import annotations

import importlib
import sys
import warnings

UNTIL = "0.2"  # the release that drops the old paths


def alias(old: str, new: str) -> None:
    """Make `old` the very module `new` (one registry, one set of classes), warning the importer once."""
    warnings.warn(f"{old} moved to {new}; the old path works until kdsearch {UNTIL}", DeprecationWarning,
                  stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
