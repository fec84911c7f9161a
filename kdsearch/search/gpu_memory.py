"""Will the trials fit on the GPU? A preflight before any trial starts, measured rather than guessed.

Fractional GPUs (`resources_per_trial.gpu: 0.25`) put several trials on one
device. Each holds its student's training step (weights, gradients, AdamW
state, activations at the largest batch size), what it keeps resident (the
training images, their views' parameters, the teacher's cached outputs, or a
live teacher) and a CUDA context. The step is measured on the driver's GPU for
every candidate student; when the sum for the trials that share a GPU exceeds
its free memory, the search stops with exit 2 before any trial runs out of
memory halfway.
"""

from __future__ import annotations

import logging
import math

import torch

from ..config import Config, Dist
from ..core.errors import KdsearchError

log = logging.getLogger("kdsearch")

CUDA_CONTEXT = 512 * 2**20  # what a process's CUDA context and allocator slack take beside its tensors
GB = 2**30


def release_cuda() -> None:
    """Give the driver's cached CUDA memory back before trials start on the same GPU."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trials_per_gpu(cfg: Config) -> int:
    gpu = cfg.search.resources_per_trial.gpu
    return 0 if gpu <= 0 else min(cfg.search.max_concurrent, max(1, math.floor(1 / gpu + 1e-9)))


def max_batch_size(cfg: Config) -> int:
    b = cfg.search.space.batch_size
    return int(max(b.values_to_check())) if isinstance(b, Dist) else int(b)


def step_bytes(student: str, num_classes: int, image_size: int, batch_size: int, device) -> int:
    """Peak device memory of one AdamW training step of `student` at `batch_size`, measured."""
    from ..models.students import create_student

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    model = create_student(student, num_classes, image_size).to(device)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    for _ in range(2):  # the second step holds AdamW's state too
        loss = model(x).logsumexp(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del model, opt, x, loss
    torch.cuda.empty_cache()
    return int(peak)


def resident_bytes(prepared) -> int:
    """What a trial keeps on its device besides the step: images and views, cached outputs, or a live teacher."""
    t = prepared.targets
    if t is not None:
        return t.views.nbytes + t.logits.nbytes + (0 if t.features is None else t.features.nbytes)
    params = sum(p.numel() * p.element_size() for m in prepared.teacher.members for p in m.model.parameters())
    data = prepared.data  # the pool's bytes without concatenating it
    return data.train.x.nbytes + (0 if data.unlabeled is None else data.unlabeled.nbytes) + params


def check_fit(per_trial: int, trials: int, free: int) -> None:
    """Exit 2 when `trials` trials of `per_trial` bytes each do not fit in `free` bytes."""
    if trials * per_trial > free:
        raise KdsearchError(
            f"resources_per_trial.gpu: {trials} trials per GPU need about {per_trial / GB:.1f} GB each "
            f"({trials * per_trial / GB:.1f} GB) but the GPU has {free / GB:.1f} GB free; give each trial more of a "
            "GPU (resources_per_trial.gpu: 0.5 or 1), lower search.space.batch_size, or lower teacher.cache_views")


def preflight_gpu(cfg: Config, prepared) -> None:
    """Measure the largest trial and check that the trials sharing a GPU fit; a no-op without CUDA here."""
    trials = trials_per_gpu(cfg)
    if trials == 0 or not torch.cuda.is_available():
        return
    device = torch.device("cuda", torch.cuda.current_device())
    batch = max_batch_size(cfg)
    step = max(step_bytes(s, prepared.data.num_classes, cfg.data.image_size, batch, device) for s in prepared.students)
    per_trial = step + resident_bytes(prepared) + CUDA_CONTEXT
    free = torch.cuda.mem_get_info(device)[0]
    log.info("GPU memory: %d trials per GPU at about %.2f GB each (step %.2f GB at batch %d); %.1f GB free",
             trials, per_trial / GB, step / GB, batch, free / GB)
    check_fit(per_trial, trials, free)
