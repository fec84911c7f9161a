"""A full disk: the preflight refuses a run that cannot fit before any work, and a write that fills the disk
anyway exits 2 naming the path, with its partial files removed. On a real tmpfs (mounting one needs root; the
tests skip, saying so, where the machine does not allow it)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import torch

from kdsearch.core.errors import KdsearchError
from kdsearch.core.io import atomic_dir, save_atomic

from conftest import KDSEARCH, tiny_config, write_config


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of the given size in MB; unmounted afterwards."""
    mounts = []

    def make(mb: int):
        where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_save_atomic_on_a_full_disk_exits_2_naming_the_file_and_removes_the_temp(tmpfs):
    disk = tmpfs(2)
    with pytest.raises(KdsearchError, match=r"cache/x\.pt: no space left on the device writing it \(.* MB free"):
        save_atomic(torch.zeros(1_000_000), disk / "cache" / "x.pt")  # 4 MB on a 2 MB disk
    assert [p.name for p in (disk / "cache").iterdir()] == []


def test_atomic_dir_on_a_full_disk_keeps_the_previous_folder(tmpfs):
    disk = tmpfs(2)
    with atomic_dir(disk / "best") as tmp:
        (tmp / "old.txt").write_text("previous export")
    with pytest.raises(KdsearchError, match="best: no space left on the device"):
        with atomic_dir(disk / "best") as tmp:
            (tmp / "big.bin").write_bytes(os.urandom(3_000_000))
    assert sorted(p.name for p in disk.iterdir()) == ["best"]  # no temp folder left
    assert (disk / "best" / "old.txt").read_text() == "previous export"


@pytest.mark.e2e
def test_a_run_that_cannot_fit_is_refused_before_any_work(tmpfs, tmp_path):
    disk = tmpfs(15)
    cfg = tiny_config(tmp_path, teacher={"source": "train", "arch": "resnet18", "epochs": 1})  # 45 MB of weights
    cfg["output"]["dir"] = str(disk / "out")
    done = subprocess.run([KDSEARCH, "run", str(write_config(tmp_path, cfg)), "--device", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"kdsearch: error: output.dir {disk / 'out'}: ") and "MB free, this run writes about" in line
    assert "teacher checkpoint 54 MB" in line and "Traceback" not in done.stderr
    assert list(disk.iterdir()) == []  # nothing written, not even the folder


@pytest.mark.e2e
def test_a_disk_that_fills_during_the_teacher_step_exits_2_and_leaves_no_temp_file(tmpfs, tmp_path):
    disk = tmpfs(80)
    cfg = tiny_config(tmp_path, teacher={"source": "train", "arch": "resnet18", "epochs": 3, "patience": 3})
    cfg["output"]["dir"] = str(disk / "out")
    run = subprocess.Popen([KDSEARCH, "train", str(write_config(tmp_path, cfg)), "--device", "cpu"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in run.stderr:  # the preflight passed and the teacher trains: another program fills the disk
        lines.append(line)
        if "teacher epoch 1" in line:
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            (disk / "filler").write_bytes(b"\0" * (free - 5_000_000))
            break
    err = "".join(lines) + run.stderr.read()
    assert run.wait(timeout=300) == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"kdsearch: error: {disk / 'out' / 'teacher'}/trained-resnet18-")
    assert "no space left on the device writing it" in last and "Traceback" not in err
    left = sorted(p.name for p in (disk / "out").rglob("*") if p.is_file())
    assert not [n for n in left if ".tmp" in n], left  # partial files removed; retries do not pile them up
    assert not (disk / "out" / "train").exists()
