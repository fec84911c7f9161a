"""The teacher's once-per-search work as a Ray task, for a driver without a GPU.

On the shipped `ray_cluster.yaml` the driver runs on a CPU-only head: a
MedSigLIP there would score every image on a CPU. Instead the task below, given
the resources of `teacher.resources` (or a whole GPU when this machine has none
and the cluster does), trains a `train` teacher, computes the cached outputs,
checks the teacher against the majority baseline and writes the teacher cache,
exactly as `step.teach` does in the driver. Only the outputs come back (the
views are remade here from their seed); no teacher model travels.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace
from typing import Any, Callable

import ray
import torch

from ..config import Config
from ..core.errors import KdsearchError
from ..data.dataset import Dataset
from .cache import cached_views
from .step import Taught, teach

log = logging.getLogger("kdsearch")


def worker_resources(cfg: Config) -> dict[str, float] | None:
    """The teacher task's resources, or None for the teacher's work in this process. Needs Ray started."""
    t = cfg.teacher
    if not t.cache or not ray.is_initialized():
        return None
    if t.resources is None:
        has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
        return {"gpu": 1.0, "cpu": 1.0} if has_gpu and not torch.cuda.is_available() else None
    wanted, cluster = {"gpu": t.resources.gpu, "cpu": t.resources.cpu}, ray.cluster_resources()
    for key, ray_key in (("gpu", "GPU"), ("cpu", "CPU")):
        if wanted[key] > cluster.get(ray_key, 0):
            raise KdsearchError(f"teacher.resources.{key} {wanted[key]:g}: the Ray cluster has "
                                f"{cluster.get(ray_key, 0):g} {ray_key}s; lower it, add a node that has them "
                                "(ray_cluster.yaml), or drop teacher.resources to run the teacher here")
    return wanted


def _teach_task(cfg: Config, data: Dataset) -> tuple[Taught, dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    taught = teach(cfg, data, device)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "device": device}
    return taught._replace(teacher=taught.teacher.without_models(), targets=replace(taught.targets, views=None)), where


def on_worker(resources: dict[str, float] | None) -> Callable | None:
    """A `teach_fn` for `distill.prepare` that runs on a Ray worker holding `resources`; None for None."""
    return None if resources is None else functools.partial(teach_on_worker, resources=resources)


def teach_on_worker(cfg: Config, data: Dataset, device=None, *,
                    resources: dict[str, float]) -> Taught:
    """`step.teach` in a Ray task holding `resources` (`device` is the worker's own); a refused teacher exits 2
    as it would here."""
    task = ray.remote(num_gpus=resources["gpu"], num_cpus=resources["cpu"], max_retries=0)(_teach_task)
    try:
        taught, where = ray.get(task.remote(cfg, data))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, KdsearchError):
            raise KdsearchError(str(e.cause)) from None
        raise
    targets = taught.targets
    log.info("teacher work ran as a Ray task on node %s (pid %d, %s): %d forward passes in %.1f s",
             where["node_id"][:12], where["pid"], where["device"], targets.forward_passes, targets.seconds)
    return taught._replace(targets=replace(targets, views=cached_views(cfg, data)))
