"""A search's terminal shows kdsearch's own lines; each library's informational chatter is switched off through
that library's own setting, and `-v` brings every line back."""

from __future__ import annotations

import os
import subprocess

import pytest

from kdsearch.runtime.quiet import ENVIRONMENT

from conftest import KDSEARCH, tiny_config, write_config

pytestmark = pytest.mark.e2e  # two real searches through the console script

NOISE = ["Creating initial MLflow database tables", "Token authentication is enabled",
         "A new study created in RDB", "Configuration for experiment", "View detailed results here",
         "To visualize your results with TensorBoard"]
GONE = ["Successfully registered model", "Created version",  # MLflow's fluent registration prints these with no
        # switch; kdsearch registers the student through MlflowClient, which does not, so -v has none of them either
        "non_strict_utils.py"]  # torch.export's "dimension ... specialized", when MLflow exported an eager student;
# the registered student is now the shipped TorchScript file, saved as it is: no torch.export runs


def _run(tmp_path, *flags) -> str:
    tmp_path.mkdir()
    cfg = tiny_config(tmp_path, search={"num_samples": 2, "max_concurrent": 2,
                                        "space": {"lr": {"loguniform": [1e-3, 1e-2]}, "batch_size": 64}})
    path = write_config(tmp_path, cfg)
    # a fresh shell's environment: in-process CLI tests may have set the switches in this one, and an in-process
    # ray.init sets RAY_AUTH_MODE (which silences Ray's token notice at its source)
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT and not k.startswith(("RAY_", "TUNE_"))}
    done = subprocess.run([KDSEARCH, *flags, "run", str(path), "--device", "cpu"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_the_demo_shows_only_kdsearch_lines_and_v_brings_the_rest_back(tmp_path):
    quiet = _run(tmp_path / "quiet")
    assert [n for n in NOISE + GONE if n in quiet] == []
    assert "tiny-student/1" in quiet  # the student was registered all the same
    assert "Ray Tune's results and checkpoints: " in quiet  # said in kdsearch's words instead
    assert "compare the trials in MLflow's UI: kdsearch ui " in quiet
    loud = _run(tmp_path / "loud", "-v")
    assert [n for n in NOISE if n not in loud] == []
