"""The rules that keep the package easy to change (docs/architecture.md), checked on the source itself."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_config, write_config

PKG = REPO / "kdsearch"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every module name `name` imports, at the top or inside a function (a lazy import is still an arrow)."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found |= {stem} | {f"{stem}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {t for t in _imports(m, p) if t in mods and t != m} for m, p in mods.items()}


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


@pytest.mark.parametrize("third_party,allowed", [
    ("mlflow", {"kdsearch.tracking", "kdsearch.tracking.search"}),  # only tracking talks to MLflow
    ("transformers", {"kdsearch.teachers.huggingface"}),
])
def test_only_its_owner_imports(third_party, allowed):
    users = {m for m, p in _modules().items() if any(t.split(".")[0] == third_party for t in _imports(m, p))}
    assert users <= allowed, users - allowed


def test_only_the_trainable_talks_to_tunes_session():
    callers = {m for m, p in _modules().items()
               if any(k in p.read_text() for k in ("tune.report(", "tune.get_checkpoint(", "train.report("))}
    assert callers == {"kdsearch.search.trainable"}


def test_the_engine_knows_no_ray_mlflow_or_pipeline():
    """engine, losses, transforms and batches are plain PyTorch: usable in any training loop."""
    for name in ("kdsearch.engine.loop", "kdsearch.losses", "kdsearch.data.transforms", "kdsearch.engine.batches"):
        imported = _imports(name, _modules()[name])
        assert not {t.split(".")[0] for t in imported} & {"ray", "mlflow", "optuna"}, name
        assert not any(t.startswith(("kdsearch.search.tuner", "kdsearch.tracking", "kdsearch.distill.distiller")) for t in imported)


@pytest.mark.e2e
def test_kdsearch_train_does_not_import_ray(tmp_path):
    path = write_config(tmp_path, tiny_config(tmp_path))
    script = (
        "import sys\n"
        "from kdsearch.cli import main\n"
        f"sys.argv = ['kdsearch', 'train', r'{path}', '--device', 'cpu']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "NO_RAY"


@pytest.mark.e2e  # fresh interpreters
@pytest.mark.parametrize("args", [["validate", "{config}"], ["list-models"], ["--help"]])
def test_quick_commands_import_no_ray_mlflow_optuna_or_scikit_learn(tmp_path, args):
    """validate, list-models and --help answer in seconds: no Ray, MLflow, Optuna or scikit-learn import, and no
    image decoded (the config's data is digits, which validate counts without loading). Once the student sizes
    are cached (the first call), not even torchvision or timm is imported."""
    path = write_config(tmp_path, tiny_config(tmp_path))
    script = (
        "import sys\n"
        "from kdsearch.cli import main\n"
        f"sys.argv = ['kdsearch', *{[a.format(config=path) for a in args]!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = {'ray', 'mlflow', 'optuna', 'sklearn', 'torchvision', 'timm'}\n"
        "heavy &= {m.split('.')[0] for m in sys.modules}\n"
        "print('HEAVY', sorted(heavy))\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    imported = []
    for _ in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported.append(proc.stdout.strip().splitlines()[-1])
    assert imported[0] in ("HEAVY []", "HEAVY ['torchvision']", "HEAVY ['timm', 'torchvision']")  # sizes measured
    assert imported[1] == "HEAVY []"
    assert not (tmp_path / "out").exists()  # nothing decoded or cached
