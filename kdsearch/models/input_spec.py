"""How a model wants its pixels (`teacher.input` in the config; students' own spec in students.py).

A module of its own so that the students and the transforms can use it without importing the whole config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InputSpec(BaseModel):
    """How a model wants its pixels: the same view, preprocessed its own way."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    size: int | None = Field(None, ge=8, le=2048)
    """Square side in pixels; unset = data.image_size."""
    channels: Literal[1, 3] = 3
    """1 = grayscale, 3 = RGB; images are converted to this."""
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel mean subtracted after scaling to [0, 1]. 0.5 suits models trained from scratch."""
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel std divided by."""
