"""Cached views as recipes: the pixels a trial remakes are the teacher's pixels, and memory is O(images)."""

import pickle

import numpy as np
import pytest
import torch

from kdsearch.config import Config
from kdsearch.data.transforms import PARAMS, Views, apply_augment, augment, augment_params
from kdsearch.distill.distiller import Distiller, Hparams, prepare
from kdsearch.models.students import create_student

from conftest import tiny_config


@pytest.mark.parametrize("level", ["standard", "strong"])
def test_a_view_is_the_same_pixels_in_any_batch(level):
    x = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = Views.make(x, level, views=3, seed=7)
    whole = [views.pixels(v, slice(None)) for v in range(3)]
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(1))[:13]
    pick = torch.randint(3, (13,), generator=torch.Generator().manual_seed(2))
    batch = views.pixels(pick, idx)  # a shuffled batch, each image in its own view
    for j in range(13):
        assert torch.equal(batch[j], whole[int(pick[j])][int(idx[j])])
    assert not torch.equal(whole[0], whole[1])
    assert torch.equal(Views.make(x, level, 3, seed=7).params, views.params)  # seeded: the same on every machine
    # augment() is the same draw applied in one go
    gen = torch.Generator().manual_seed(3)
    params = augment_params(len(x), x.shape[-2:], level, torch.Generator().manual_seed(3))
    assert torch.equal(augment(x, level, gen), apply_augment(x, params, level))


def _synthetic_224(tmp_path, n: int) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / "big.npz"
    np.savez(path, train_images=rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8),
             train_labels=np.arange(n) % 4, val_images=rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8),
             val_labels=np.arange(16) % 4)
    return str(path)


def test_sixteen_views_at_224px_cost_no_more_memory_than_one(tmp_path):
    """dermamnist-sized shapes (224 px RGB): the driver's targets and what each trial holds grow with the images,
    not with cache_views (pixels per view would be 16 x 147 kB per image)."""
    torch.save(create_student("resnet8", 4, 16).state_dict(), tmp_path / "t.pt")
    npz = _synthetic_224(tmp_path, 48)
    sizes = {}
    for views in (1, 16):
        cfg = Config.model_validate(tiny_config(
            tmp_path / f"v{views}", data={"source": "npz", "root": npz, "image_size": 224, "augment": "strong"},
            teacher={"source": "checkpoint", "arch": "resnet8", "weights": str(tmp_path / "t.pt"),
                     "input": {"size": 16}, "cache_views": views},
            student={"candidates": ["resnet8"]}))
        prepared = prepare(cfg, "cpu")
        pool = prepared.data.pool().x
        assert prepared.targets.views.num_views == views
        assert prepared.targets.forward_passes == views * 48 + 16
        d = Distiller(cfg, Hparams(student="resnet8", temperature=4.0, alpha=0.5, lr=1e-3, weight_decay=0.0,
                                   batch_size=16, class_weight_power=0.0), prepared, "cpu")
        sizes[views] = {"driver": prepared.targets.views.nbytes, "trial": d.views.nbytes,
                        "shipped": len(pickle.dumps(prepared.targets.views)), "pool": pool.nbytes}
    one, sixteen = sizes[1], sizes[16]
    assert sixteen["pool"] == one["pool"] == 48 * 3 * 224 * 224
    for k in ("driver", "trial", "shipped"):
        # 15 more views add 15 x 48 x PARAMS floats (46 kB), not 15 x 7.2 MB of pixels
        assert sixteen[k] - one[k] <= 16 * 48 * PARAMS * 4 + 4096, (k, sizes)
        assert sixteen[k] < 1.05 * one["pool"] + 65536, (k, sizes)


def test_ranked_puts_the_best_first_and_unrankable_results_last():
    """The order `kdsearch ui`'s comparison link and the learning-curve plot use: best first on the metric, ties in
    their order, and results without a finite metric (none, NaN, diverged) after every ranked one."""
    from kdsearch.core.results import ranked

    rows = [{"id": "none"}, {"id": "low", "val_macro_f1": 0.5}, {"id": "nan", "val_macro_f1": float("nan")},
            {"id": "high", "val_macro_f1": 0.9}, {"id": "tie", "val_macro_f1": 0.5},
            {"id": "diverged", "val_macro_f1": 0.99, "diverged": True}]
    order = [r["id"] for r in ranked(rows, lambda r: r, "val_macro_f1", "max")]
    assert order == ["high", "low", "tie", "none", "nan", "diverged"]
    order = [r["id"] for r in ranked(rows, lambda r: r, "val_macro_f1", "min")]
    assert order == ["low", "tie", "high", "none", "nan", "diverged"]


def test_standard_views_shift_by_whole_pixels_and_flip_exactly():
    """Every standard view is the image shifted by whole pixels (and mirrored): no resampling blur, so the view a
    trial remakes is bit-identical to the one the teacher scored, and nothing is averaged away."""
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = augment_params(64, (16, 16), "standard", torch.Generator().manual_seed(5))
    out = apply_augment(x, params, "standard")
    shifts = params[:, 0:2] * 8  # normalised shift x half the side: pixels
    assert torch.equal(shifts, shifts.round()) and shifts.abs().max() == 2 and (shifts != 0).any()
    checked = 0
    for i in range(64):
        dx, dy, flip = int(shifts[i, 0]), int(shifts[i, 1]), float(params[i, 2])
        for r in range(16):
            for c in range(16):
                rs, cs = r + dy, (c + dx if flip > 0 else 15 - c + dx)
                if 0 <= rs < 16 and 0 <= cs < 16:  # inside: the source pixel itself (outside: reflection padding)
                    assert torch.equal(out[i, :, r, c], x[i, :, rs, cs]), (i, r, c)
                    checked += 1
    assert checked > 64 * 16 * 12


def test_a_positive_angle_turns_the_image_counter_clockwise():
    """The rotation's direction is part of the views' recipe (teacher_cache.VIEWS_RECIPE): pinned here."""
    import math

    x = torch.arange(36, dtype=torch.uint8).reshape(1, 1, 6, 6)
    p = torch.zeros(1, PARAMS)
    p[:, 2], p[:, 3], p[:, 4:7] = 1.0, math.pi / 2, 1.0
    assert torch.equal(apply_augment(x, p, "strong"), torch.rot90(x, 1, (-2, -1)))
    p[:, 3] = -math.pi / 2
    assert torch.equal(apply_augment(x, p, "strong"), torch.rot90(x, -1, (-2, -1)))


def test_each_cached_batch_pairs_a_views_pixels_with_that_views_teacher_outputs():
    """cached_batches draws one view per image; the pixels it feeds and the logits it pairs them with must be of
    the same view. Here a view's 'teacher output' is its own mean pixel, so a mismatch shows in every batch."""
    from kdsearch.config import InputSpec
    from kdsearch.data.transforms import to_input
    from kdsearch.engine.batches import cached_batches

    x = torch.randint(0, 256, (50, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = Views.make(x, "strong", views=4, seed=3)
    spec = InputSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    logits = torch.stack([to_input(views.pixels(v, slice(None)), spec, 12).mean((1, 2, 3))[:, None].expand(-1, 2)
                          for v in range(4)])  # [V, N, K]
    seen = 0
    for xb, yb, teacher in cached_batches(views, torch.arange(50), logits, 16, spec, 12,
                                          torch.Generator().manual_seed(1)):
        assert torch.allclose(xb.mean((1, 2, 3)), teacher[:, 0], atol=1e-5)
        seen += len(yb)
    assert seen == 50
    assert len({round(float(v), 4) for v in logits[:, 0, 0]}) == 4  # the four views differ


def test_the_teacher_output_cache_is_keyed_by_the_augmentation(tmp_path, monkeypatch):
    """Outputs cached for one augmentation (or one recipe of views) are never reused for another: the pixels differ."""
    from kdsearch.teachers import cache as teacher_cache

    from conftest import resnet8_teacher

    # a checkpoint teacher: its own fingerprint does not change with data.augment (a teacher trained here would)
    base = tiny_config(tmp_path, data={"source": "digits", "image_size": 8, "augment": "standard"},
                       teacher=resnet8_teacher(tmp_path, cache_views=2))
    first = prepare(Config.model_validate(base), "cpu")
    again = prepare(Config.model_validate(base), "cpu")
    assert first.targets.forward_passes > 0 and again.targets.forward_passes == 0
    strong = prepare(Config.model_validate({**base, "data": {**base["data"], "augment": "strong"}}), "cpu")
    assert strong.targets.forward_passes > 0
    assert not torch.equal(strong.targets.logits, first.targets.logits)
    monkeypatch.setattr(teacher_cache, "VIEWS_RECIPE", teacher_cache.VIEWS_RECIPE + 1)
    assert prepare(Config.model_validate(base), "cpu").targets.forward_passes > 0
