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


ROOMS = ["core", "models", "losses", "config", "runtime", "tracking", "data", "engine", "teachers", "preflight",
         "distill", "search", "deploy", "cli"]
"""The rooms bottom to top (docs/architecture.md): each imports only rooms below it."""
ALIASES = {"kdsearch.students": "kdsearch.models.students", "kdsearch.protocols": "kdsearch.deploy.protocols"}
"""Old paths kept for one release (docs/architecture.md, core/moved.py): each is the moved module itself."""


def _room(module: str) -> str:
    """A module's room: its folder under kdsearch/, or a top-level module's own name."""
    return module.split(".")[1] if "." in module else "kdsearch"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycles():
    assert not _cycles(_graph())


def test_no_cycles_between_rooms():
    rooms: dict[str, set[str]] = {}
    for m, targets in _graph().items():
        if m not in ALIASES:
            rooms.setdefault(_room(m), set()).update(_room(t) for t in targets if _room(t) != _room(m))
    assert not _cycles(rooms)


def test_every_module_is_in_a_room():
    loose = {m for m in _modules() if _room(m) not in ROOMS} - set(ALIASES) - {"kdsearch", "kdsearch.__main__"}
    assert not loose, f"put {sorted(loose)} in a room (docs/architecture.md), or list the new room in ROOMS"


def test_each_room_imports_only_rooms_below_it():
    up = sorted(f"{m} -> {t}" for m, targets in _graph().items() if m not in ALIASES and _room(m) in ROOMS
                for t in targets if _room(t) in ROOMS and ROOMS.index(_room(t)) > ROOMS.index(_room(m)))
    assert not up, up


def test_core_imports_nothing_of_kdsearch_outside_core():
    out = {f"{m} -> {t}" for m, targets in _graph().items() if _room(m) == "core"
           for t in targets if _room(t) != "core" and t != "kdsearch"}
    assert not out, out


def test_data_knows_nothing_of_the_stages_after_it():
    later = {"teachers", "distill", "search", "deploy"}
    found = {f"{m} -> {t}" for m, targets in _graph().items() if _room(m) == "data" for t in targets
             if _room(t) in later}
    assert not found, found


def _users(package: str) -> set[str]:
    return {m for m, p in _modules().items()
            if any(t == package or t.startswith(package + ".") for t in _imports(m, p))}


@pytest.mark.parametrize("package,rooms,modules", [
    ("ray.tune", {"search"}, set()),  # only search/ imports Ray Tune
    ("ray", {"search"}, {"kdsearch.teachers.worker"}),  # Ray itself: search/, and the teacher's Ray task
    ("mlflow", {"tracking"}, set()),  # only tracking/ talks to MLflow
    ("optuna", {"search"}, {"kdsearch.runtime.quiet"}),  # and quiet, for Optuna's logging switch
    ("transformers", set(), {"kdsearch.teachers.huggingface"}),
])
def test_only_its_owner_imports(package, rooms, modules):
    stray = {m for m in _users(package) if _room(m) not in rooms and m not in modules}
    assert not stray, stray


def test_only_the_trainable_talks_to_tunes_session():
    callers = {m for m, p in _modules().items()
               if any(k in p.read_text() for k in ("tune.report(", "tune.get_checkpoint(", "train.report("))}
    assert callers == {"kdsearch.search.trainable"}


def test_the_engine_knows_no_ray_mlflow_or_pipeline():
    """engine/, losses/ and the transforms are plain PyTorch: usable in any training loop."""
    plain = [m for m in _modules() if _room(m) in ("engine", "losses")] + ["kdsearch.data.transforms"]
    for name in plain:
        imported = _imports(name, _modules()[name])
        assert not {t.split(".")[0] for t in imported} & {"ray", "mlflow", "optuna"}, name
        assert not {_room(t) for t in imported if t.startswith("kdsearch.")} & {"distill", "search", "tracking"}, name


def test_the_rules_catch_an_upward_import(tmp_path):
    """The checks above read the real source; this one shows they see a lazy import pointing up."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from ..search import tuner\n")
    assert "kdsearch.search.tuner" in _imports("kdsearch.data.probe", module)


@pytest.mark.parametrize("old,new", sorted(ALIASES.items()))
def test_an_old_path_is_the_moved_module_with_a_warning(old, new):
    import importlib
    import sys
    import warnings

    moved = importlib.import_module(new)
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = importlib.import_module(old)
    assert found is moved  # one module: a student registered through the old path is in the one registry
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


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
