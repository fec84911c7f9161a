"""The fast tier's one real search: Ray Tune + Optuna + ASHA on digits at 8 px, two one-epoch trials, then the
export. The e2e tier (test_search.py and others) covers rungs, MLflow, resume, faults and the CLI at length."""

from __future__ import annotations

import json

import torch

from kdsearch.config import Config
from kdsearch.deploy.export import export_best
from kdsearch.search.tuner import run_search

from conftest import tiny_config


def test_a_tiny_search_runs_both_trials_picks_the_better_and_exports_it(ray_cluster, tmp_path):
    cfg = Config.model_validate(tiny_config(tmp_path, search={
        "num_samples": 2, "max_concurrent": 2, "max_epochs": 1, "start_points": False,
        "space": {"lr": {"choice": [3.0e-3, 5.0]}, "alpha": 0.5, "temperature": 4.0, "batch_size": 64,
                  "weight_decay": 1.0e-4, "class_weight_power": 0.0}}))
    result = run_search(cfg, device="cpu")
    assert result.trials == {"completed": 2, "stopped_early": 0, "budget_cut": 0, "diverged": 0, "errored": 0}
    scores = [json.loads(p.read_text().splitlines()[-1])
              for p in result.experiment_path.glob("*/result.json")]
    assert len(scores) == 2
    top = max(scores, key=lambda r: r["val_macro_f1"])
    assert result.best["trial_id"] == top["trial_id"]
    assert result.best["metrics"]["val_macro_f1"] == top["val_macro_f1"] > min(s["val_macro_f1"] for s in scores)

    exported = export_best(cfg, register=False)
    card = json.loads((exported.out_dir / "model_card.json").read_text())
    assert card["trial_id"] == top["trial_id"]
    assert abs(card["metrics"]["val_macro_f1"] - top["val_macro_f1"]) < 1e-6  # the file reproduces its trial
    scripted = torch.jit.load(str(exported.out_dir / "student.torchscript.pt"))
    assert scripted(torch.zeros(2, 3, 8, 8)).shape == (2, 10)
