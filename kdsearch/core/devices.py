"""Which torch device: one rule for the commands (`--device`) and for Ray trials."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` = the GPU when torch sees one (in a Ray trial: the GPU Ray gave it, if any), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
