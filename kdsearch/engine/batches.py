"""Mini-batch feeders for the engine: (model input, labels, teacher outputs or None).

Two ways to get teacher logits: cached (the student trains on the exact views
the teacher saw once, see teachers/cache.py) or live (the teacher runs on each
augmented batch). Both are seeded per epoch.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..config import InputSpec
from ..data.transforms import Views, augment, to_input
from .loop import Batch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def cached_batches(views: Views, y: torch.Tensor, logits: torch.Tensor | None, batch_size: int, spec: InputSpec,
                   size: int, gen: torch.Generator, features: torch.Tensor | None = None) -> Iterator[Batch]:
    """views of N images, logits [V, N, (M,) K], features [V, N, D]: each image in one of its cached views (pixels
    remade on the views' device), shuffled. The teacher side of a batch is its logits, or (logits, features)."""
    n, device = len(views), views.x.device
    order = torch.randperm(n, generator=gen).to(device)
    pick = torch.randint(views.num_views, (n,), generator=gen).to(device)
    for i in range(0, n, batch_size):
        idx, v = order[i:i + batch_size], pick[order[i:i + batch_size]]
        teacher = logits[v, idx] if logits is not None else None
        if features is not None:
            teacher = (teacher, features[v, idx])
        yield to_input(views.pixels(v, idx), spec, size), y[idx], teacher


def live_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, level: str, spec: InputSpec, size: int,
                 gen: torch.Generator, teacher: Callable[[torch.Tensor],
                                                         torch.Tensor] | None = None) -> Iterator[Batch]:
    """Fresh augmentation per batch; `teacher` (uint8 batch -> logits) runs live on the same pixels."""
    order = torch.randperm(len(x), generator=gen).to(x.device)
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        xb = augment(x[idx], level, gen)
        yield to_input(xb, spec, size), y[idx], (teacher(xb) if teacher is not None else None)
