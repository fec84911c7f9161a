"""The engine learns real data; Distiller checkpoints resume exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from kdsearch.config import Config, InputSpec
from kdsearch.data.dataset import load_dataset
from kdsearch.distill.distiller import Distiller, Hparams, prepare
from kdsearch.engine.loop import classification_metrics, evaluate

from conftest import tiny_config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    cfg = Config.model_validate(tiny_config(tmp, search={"max_epochs": 2}))
    return cfg, prepare(cfg, "cpu")


def hp(**kw) -> Hparams:
    base = dict(student="resnet8", temperature=4.0, alpha=0.0, lr=3e-3, weight_decay=1e-4, batch_size=64,
                class_weight_power=0.0)
    return Hparams(**{**base, **kw})


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_learns_digits_well_above_chance_in_two_epochs(prepared, alpha):
    cfg, p = prepared
    d = Distiller(cfg, hp(alpha=alpha), p, "cpu")
    history = [d.run_epoch(), d.run_epoch()]
    assert history[-1]["val_macro_f1"] > 0.6, history  # chance is 0.1
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_checkpoint_resume_reproduces_the_next_epoch(prepared):
    cfg, p = prepared
    a = Distiller(cfg, hp(alpha=0.5, student="shufflenet_v2_x0_5"), p, "cpu")
    a.run_epoch()
    state = {k: v for k, v in a.state_dict().items()}
    saved = {"model": {k: v.clone() for k, v in state["model"].items()}, "optimizer": state["optimizer"],
             "scheduler": state["scheduler"], "epoch": state["epoch"]}
    import copy
    saved = copy.deepcopy(saved)
    expected = a.run_epoch()
    b = Distiller(cfg, hp(alpha=0.5, student="shufflenet_v2_x0_5"), p, "cpu")
    b.load_state_dict(saved)
    got = b.run_epoch()
    assert got["epoch"] == expected["epoch"] == 2
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
    assert got["val_macro_f1"] == pytest.approx(expected["val_macro_f1"])


def test_metrics_are_scikit_learns(prepared):
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    m = classification_metrics(y_true, y_pred, 4, loss=0.0)
    # the contract's f1_score(average="macro"): class 3, in neither y_true nor y_pred, is not a 0 in the average
    assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m.macro_f1 > f1_score(y_true, y_pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert m.accuracy == pytest.approx(5 / 7)
    assert len(m.per_class_f1) == 4 and np.isnan(m.per_class_f1[3])  # no val image of class 3: no F1 (n/a)
    assert np.array(m.confusion).sum() == 7 and m.confusion[2][0] == 1


def test_macro_f1_averages_the_classes_val_holds_even_when_an_absent_one_is_predicted():
    """A class with no val image (100/100/2 images and val_fraction 0.1) predicted once is not a 0 in the average:
    that prediction costs the recall of the class the image is, as f1_score over the present labels says."""
    y_true = np.array([0] * 10 + [1] * 10)
    y_pred = y_true.copy()
    y_pred[0] = 2  # one image of class 0 predicted as the absent class 2
    m = classification_metrics(y_true, y_pred, 3, loss=0.0)
    assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1], average="macro"))
    assert m.macro_f1 == pytest.approx((18 / 19 + 1) / 2)  # 0.974, not (0.947 + 1 + 0) / 3
    assert np.isnan(m.per_class_f1[2]) and m.per_class_f1[0] == pytest.approx(18 / 19)


def test_untrained_model_scores_near_chance(tmp_path):
    cfg = Config.model_validate(tiny_config(tmp_path))
    data = load_dataset(cfg)
    from kdsearch.models.students import create_student

    torch.manual_seed(0)
    m = evaluate(create_student("resnet8", 10, 8), data.val.x, data.val.y, InputSpec(), 8, 10, "cpu")
    assert m.accuracy < 0.35
