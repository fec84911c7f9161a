"""The figures in README.md and docs/measured.md, rendered from the JSON each benchmark wrote (benchmarks/results/).

    python benchmarks/render.py           # rewrite every marked block from its JSON
    python benchmarks/render.py --check   # exit 1 naming each block that differs from its JSON

A block is the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; NAME picks the renderer below, which
reads one JSON file. A figure typed into a block, or a block whose JSON changed since, fails `--check`
(tests/test_benchmark_docs.py runs it). Prose outside the blocks carries no benchmark figure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = [REPO / "README.md", REPO / "docs" / "measured.md"]
NAMES = {"resnet34": "ResNet-34", "resnet18": "ResNet-18", "resnet8": "ResNet-8", "shufflenet_v2_x1_0":
         "ShuffleNetV2-x1.0", "mobilenet_v3_large": "MobileNetV3-Large", "mobilenet_v3_small": "MobileNetV3-S"}


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _n(name: str) -> str:
    return NAMES.get(name, name)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _member(r: dict) -> str:
    return f"{_n(r['student'])} {r['format']} {r['val_macro_f1']:.4f} at {r['pair_size_mb']:.1f} MB and " \
           f"{r['pair_latency_ms']:.1f} ms"


def deploy_front_readme() -> str:
    d = load("deploy_front")
    front = " ".join(["the front is", "; ".join(_member(r) for r in d["front"])])
    best = d["best_under_25mb"]
    return (f"Searching what ships (`benchmarks/deploy_front.py`; Fashion-MNIST, 2,000 train images at 16 px, "
            f"{d['trials_run']} trials over the loss menu and `precision: {{choice: [fp32, fp16, int8]}}` for "
            f"ResNet-34/18/8, ShuffleNetV2 and MobileNetV3-L, {d['wall_s']:,.0f} s on 2 cores of an {d['cpu']}): "
            f"{front} (val "
            "macro-F1 of the shipped file; file size and latency at batch 1 on one thread, the medians of each student "
            "and format's trials). "
            f"Best under 25 MB: {_n(best['student'])} {best['format']} {best['val_macro_f1']:.4f}. "
            f"{_kd_added_sentence(d)}")


def _kd_added_sentence(d: dict) -> str:
    k = d.get("kd_added")
    if k is None:
        return "The search had no no-KD control."
    if k["gain"] is None:
        return f"KD added: no gain claimed ({k['why']})."
    c = k["control"]
    return (f"KD added {k['gain']:+.4f} val macro-F1 for {_n(c['student'])} {c['format']} at lr {c['lr']:.3g} "
            f"(the no-KD control against its matched KD start point, both after {c['epochs']} of {c['max_epochs']} "
            "epochs).")


def deploy_front_measured() -> str:
    d = load("deploy_front")
    rows = [[r["trial_id"], _n(r["student"]), r["format"], f"{r['loss']} (alpha {r['alpha']:.2f})",
             f"{r['val_macro_f1']:.4f}", f"{r['pair_size_mb']:.2f} MB", f"{r['pair_latency_ms']:.2f} ms"]
            for r in d["front"]]
    front = _table(["trial", "student", "format", "loss", "val macro-F1 (file)", "file (pair median)",
                    "latency, batch 1, 1 thread (pair median)"], rows)
    arch = []
    for name, a in d["per_architecture"].items():
        t, lat = a["train_int8"], a["latency_ms"]
        arch.append([_n(name), f"{t['size_mb']:.2f} MB", f"{t['val_macro_f1']:.4f}", f"{t['val_macro_f1_float']:.4f}",
                     f"{a['train_int8_minus_float_macro_f1']:+.4f}",
                     f"{lat['fp32']:.2f} / {lat['int8']:.2f} ms = {a['fp32_over_int8_latency']:.1f}×"])
    per_arch = _table(["student", "int8 file", "int8 val macro-F1", "float val macro-F1", "int8 - float",
                       "fp32 / int8 latency"], arch)
    in_search = "; ".join(f"{_n(n)} {a['search_int8_minus_float_macro_f1']:+.4f} ({a['search_int8_trials']} "
                          f"trial{'s' if a['search_int8_trials'] > 1 else ''})"
                          for n, a in d["per_architecture"].items() if a["search_int8_trials"])
    small, r34, fl = d["best_under_5mb"], d["best_int8_resnet34"], d["best_float_under_25mb"]
    importances = [line for line in d["summary"].splitlines() if line.startswith("importance")]
    lines = [
        f"The run took {d['wall_s']:,.0f} s on 2 cores of an {d['cpu']}; {d['finished_trials']} of "
        f"{d['trials_run']} trials finished "
        f"(`finished_trials`, `trials_run`, `wall_s` in `benchmarks/results/deploy_front.json`). Every figure is a "
        "finished trial's shipped file on the whole val split; size and latency are the medians of the trials of each "
        "student and format (the `pair_*` keys), as kdsearch's front compares them.",
        "", front, "",
        f"- Best at ≤ 25 MB: {_member(d['best_under_25mb'])}. Best at ≤ 5 MB: "
        + (_member(small) if small else "no finished search trial of 5 MB or less") + ".",
        "- An int8 ResNet-34 against the best float student that fits: "
        + (f"{r34['val_macro_f1']:.4f} against {_n(fl['student'])} {fl['format']}'s {fl['val_macro_f1']:.4f}"
           if r34 and fl else "not both finished in the search") + ".",
        f"- {_kd_added_sentence(d)}",
        "",
        "Per architecture: one `kdsearch train` each in int8 at the space's midpoint, the int8 file against the same "
        "trained student in float, both on the whole val split; latency of untrained builds (weights do not change "
        "it), batch 1, one thread, median of 100 runs (`per_architecture`):",
        "", per_arch, "",
        "In the search the int8 trials' files against their own float models: "
        f"{in_search or 'no int8 trial finished'}.",
        "",
        "The search's importance lines, as it printed them (`summary`):",
        "", *(f"- {line}" for line in importances),
    ]
    return "\n".join(lines)


def plan_counts_measured() -> str:
    d = load("plan_counts")
    rows = []
    for cmd, after in d["after"]["commands"].items():
        before = d["before"]["commands"][cmd]
        builds = f"{max(before['student_builds'].values())} → {max(after['student_builds'].values())}"
        rows.append([f"`{cmd}`", f"{before['listings']} → {after['listings']}",
                     f"{before['most_listings_of_one_folder']} → {after['most_listings_of_one_folder']}", builds,
                     f"{before['seconds']:.1f} → {after['seconds']:.1f}"])
    return _table(["command", "listings of the 14 folders, before → after", "most of one folder",
                   "student builds each, before → after", "seconds, before → after (one run each)"], rows)


def validate_speed_measured() -> str:
    d = load("validate_speed")
    rows = [["`kdsearch validate` (sizes cached: every call after the first)", f"**{d['validate_warm_s']:.2f}**",
             f"**{d['validate_warm_over_torch']:.2f}**", f"{d['validate_warm_peak_mb']:,} MB"],
            ["`kdsearch validate` (empty size cache: the first call)", f"{d['validate_cold_s']:.2f}",
             f"{d['validate_cold_over_torch']:.2f}", f"{d['validate_cold_peak_mb']:,} MB"],
            ["`kdsearch list-models` (cached / first call)", f"{d['list_models_warm_s']:.2f} / "
             f"{d['list_models_cold_s']:.2f}", f"{d['list_models_warm_s'] / d['import_torch_s']:.2f} / "
             f"{d['list_models_cold_s'] / d['import_torch_s']:.2f}", ""],
            ["`kdsearch --help`", f"{d['help_s']:.2f}", f"{d['help_s'] / d['import_torch_s']:.2f}", ""]]
    return (f"`python benchmarks/validate_speed.py --runs {d['runs']}` (median of {d['runs']} fresh processes each, "
            f"{d['cpus']} CPU cores, on `{d['config']}`):\n\n"
            + _table(["", "seconds", f"× `python -c \"import torch\"` ({d['import_torch_s']:.2f} s, "
                      f"{d['import_torch_peak_mb']:,} MB peak)", "peak memory"], rows))


def validate_speed_readme() -> str:
    d = load("validate_speed")
    return (f"`kdsearch validate` answers in {d['validate_warm_s']:.1f} s, {d['validate_warm_over_torch']:.2f}× "
            "`python -c \"import torch\"`, once the student sizes are cached; a machine's first call builds and "
            f"traces each candidate's shipped file once: {d['validate_cold_s']:.1f} s for `digits.yaml`, and "
            f"{d['list_models_cold_s']:.0f} s for `list-models` over the whole zoo in three formats (median of "
            f"{d['runs']}, `benchmarks/validate_speed.py`).")


def views_memory_measured() -> str:
    rows = [[str(r["cache_views"]), f"{r['views_held_by_driver_mb']:.1f} MB",
             f"{r['views_shipped_to_each_trial_mb']:.1f} MB", f"{r['views_on_trial_device_mb']:.1f} MB",
             f"{r['as_pixels_before_mb']:,.1f} MB", f"{r['driver_peak_rss_mb']:,.0f} MB"] for r in load("views_memory")]
    return _table(["`cache_views`", "views held by the driver", "shipped to each trial", "on a trial's device",
                   "as pixels (before)", "driver peak RSS"], rows)


def views_memory_readme() -> str:
    one, many = load("views_memory")
    return (f"{many['cache_views']} cached views at 224 px take the memory of one: "
            f"{many['views_held_by_driver_mb']:.0f} MB for {many['images']:,} images, against "
            f"{many['as_pixels_before_mb'] / 1000:.1f} GB as pixels (`benchmarks/views_memory.py`).")


REPLAY_METHODS = {"kdsearch": "kdsearch (default)", "random": "random search, same ASHA", "recipe": "recipe, no search"}


def _replay() -> tuple[dict, dict]:
    return load("replay"), load("replay-archives")


def replay_measured() -> str:
    d, info = _replay()
    out = []
    for task, block in d.items():
        a = info["tasks"][task]
        s = a["surrogate"]
        out.append(f"**{task}**: {a['lines']} archived configurations of {a['max_epochs']} epochs, teacher val "
                   f"macro-F1 {a['teacher_val_macro_f1']:.4f}, best archived val {a['best_in_archive_val']:.4f}; "
                   f"budget {a['budget_s']:.0f} s (10 x a full trial's median {a['trial_median_s']:.1f} s), "
                   f"{a['workers']} workers, {a['seeds']} seeds; surrogate on held-out lines: final val MAE "
                   f"{s['final_val_mae']:.4f}, rank correlation {s['final_val_spearman']:.3f}.\n")
        rows = [[REPLAY_METHODS.get(m, m), *(f"{r['best_val'][f]:.4f} ± {r['best_val_std'][f]:.4f}"
                                             for f in ("0.25", "0.5", "1.0")),
                 f"{r['test_of_pick']:.4f} ± {r['test_of_pick_std']:.4f}", f"{r['time_to_random_best']:.2f}",
                 f"{r['finished_trials']:.1f} of {r['trials']:.1f}"]
                for m, r in block.items()]
        out.append(_table(["method", "best val at 1/4", "at 1/2", "at the budget", "test of pick",
                           "time to random's best", "finished of trials"], rows) + "\n")
    out.append(f"The whole replay ({len(info['methods'])} methods x {len(d)} tasks) took {info['wall_s']:.0f} s "
               "on 2 cores.")
    return "\n".join(out)


def replay_readme() -> str:
    d, info = _replay()
    parts = []
    for task, block in d.items():
        k, r, c = block["kdsearch"], block["random"], block["recipe"]
        parts.append(f"{task}: pick's test macro-F1 {k['test_of_pick']:.4f} (random {r['test_of_pick']:.4f}, recipe "
                     f"{c['test_of_pick']:.4f}), random's final best reached at {k['time_to_random_best']:.2f} of "
                     "the budget")
    seeds = info["tasks"][next(iter(d))]["seeds"]
    return (f"Replayed against learning-curve archives (`benchmarks/replay.py`, {seeds} seeds, 2 simulated "
            "workers, budget 10 full trials): " + "; ".join(parts) + ".")


RENDERERS: dict[str, Callable[[], str]] = {
    "replay_measured": replay_measured, "replay_readme": replay_readme,
    "deploy_front_readme": deploy_front_readme, "deploy_front_measured": deploy_front_measured,
    "plan_counts_measured": plan_counts_measured, "validate_speed_measured": validate_speed_measured,
    "validate_speed_readme": validate_speed_readme, "views_memory_measured": views_memory_measured,
    "views_memory_readme": views_memory_readme,
}
BLOCK = re.compile(r"(<!-- bench:(\w+) -->)(.*?)(<!-- /bench:\2 -->)", re.S)


def render(text: str) -> str:
    return BLOCK.sub(lambda m: f"{m.group(1)}\n{RENDERERS[m.group(2)]()}\n{m.group(4)}", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a block differs from its JSON")
    ap.add_argument("docs", nargs="*", type=Path, default=DOCS, help="files to render (default: README, measured)")
    args = ap.parse_args()
    stale = []
    for doc in (d.resolve() for d in args.docs):
        text = doc.read_text()
        unknown = {m.group(2) for m in BLOCK.finditer(text)} - set(RENDERERS)
        if unknown:
            raise SystemExit(f"{doc}: no renderer for block(s) {sorted(unknown)}; known: {', '.join(RENDERERS)}")
        new = render(text)
        if new != text:
            pairs = zip(BLOCK.finditer(text), BLOCK.finditer(new))
            stale += [f"{doc}: {m.group(2)}" for m, n in pairs if m.group(3) != n.group(3)]
            if not args.check:
                doc.write_text(new)
    if stale and args.check:
        print("stale or typed-in benchmark figures (python benchmarks/render.py rewrites them):\n  "
              + "\n  ".join(stale), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
