"""Bad input met at run time, through the CLI: exit 2, one line naming the key or path and the fix, no traceback,
and nothing written (no MLflow store, no outputs). Config-level mistakes are in test_config.py's table."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config, write_config


def _folder(tmp, classes: dict[str, int], garbage: bool = False):
    from PIL import Image

    root = tmp / "imgs"
    root.mkdir()
    for name, n in classes.items():
        (root / name).mkdir()
        for i in range(n):
            path = root / name / f"{i}.png"
            if garbage:
                path.write_bytes(b"not an image")
            else:
                Image.new("RGB", (10, 10), (i * 20 % 255, 0, 0)).save(path)
    return {"source": "image_folder", "root": str(root), "image_size": 8, "augment": "none"}


def _weights(tmp, classes: int | None = None, junk: bool = False):
    path = tmp / "teacher.pt"
    if junk:
        path.write_bytes(b"\x80\x04 not a checkpoint")
    else:
        from kdsearch.models.students import create_student

        torch.save(create_student("resnet8", classes, 8).state_dict(), path)
    return {"source": "checkpoint", "arch": "resnet8", "weights": str(path)}


CASES = [
    # (id, config change builder(tmp) -> sections, command, words)
    ("data-folder-missing", lambda t: {"data": {"source": "image_folder", "root": str(t / "nope")}}, "train",
     ["data.root", "folder not found", "subfolder per class"]),
    ("data-folder-empty", lambda t: {"data": _folder(t, {})}, "train", ["data.root", "at least two"]),
    ("one-class", lambda t: {"data": _folder(t, {"nevus": 4})}, "train", ["data.root", "1 class", "at least two"]),
    ("all-images-unreadable", lambda t: {"data": _folder(t, {"a": 3, "b": 3}, garbage=True)}, "train",
     ["no readable images", "6 unreadable"]),
    ("garbage-teacher-weights", lambda t: {"teacher": _weights(t, junk=True)}, "train",
     ["teacher.weights", "not a loadable PyTorch weights file"]),
    ("teacher-class-count", lambda t: {"teacher": _weights(t, classes=5)}, "train",
     ["teacher.weights", "5 classes", "data has 10"]),
    ("validate-teacher-class-count", lambda t: {"teacher": _weights(t, classes=5)}, "validate",
     ["teacher.weights", "5 classes", "data has 10"]),
    ("validate-garbage-teacher-weights", lambda t: {"teacher": _weights(t, junk=True)}, "validate",
     ["teacher.weights", "not a loadable PyTorch weights file"]),
    ("output-dir-is-a-file", lambda t: {"output": {"dir": str(_touch(t / "afile") / "out")}}, "train",
     ["output.dir", "is a file"]),
    ("mlflow-server-unreachable", lambda t: {"tracking": {"uri": "http://127.0.0.1:9"}}, "train",
     ["tracking.uri", "no MLflow server answers"]),
    ("sqlite-folder-missing", lambda t: {"tracking": {"uri": f"sqlite:///{t / 'no' / 'such' / 'mlflow.db'}"}}, "train",
     ["tracking.uri", "does not exist"]),
    ("no-student-fits", lambda t: {"student": {"candidates": ["resnet18"], "max_size_mb": 5}}, "train",
     ["student.max_size_mb", "no candidate fits"]),
    ("export-without-search", lambda t: {}, "export-best", ["no search found", "kdsearch run"]),
    ("run-with-missing-teacher-file", lambda t: {"teacher": {"source": "torchscript", "path": str(t / "t.pt")}}, "run",
     ["teacher.path", "file not found"]),
    ("unlabeled-folder-missing", lambda t: {"data": {"unlabeled": {"root": str(t / "nope")}}}, "run",
     ["data.unlabeled.root", "not found", "--set data.unlabeled.root"]),
    ("unlabeled-all-unreadable", lambda t: {"data": {"unlabeled": {"root": str(_touch(t / "u" / "x.png").parent)}}},
     "train", ["data.unlabeled.root", "no readable images", "1 unreadable"]),
]


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


@pytest.mark.parametrize("case_id,change,command,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, run_cli, monkeypatch, case_id, change, command, words):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory would show up here
    sections = change(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    path = write_config(tmp_path, tiny_config(tmp_path, **sections), "bad.yaml")
    device = ["--device", "cpu"] if command in ("train", "run") else []
    code, out, err = run_cli(command, path, *device)
    assert code == 2, (out, err)
    line = err.strip()
    assert "Traceback" not in err and len(line.splitlines()) == 1, line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    new = {p for p in tmp_path.rglob("*")} - before - {path}
    assert new == set(), sorted(map(str, new))
