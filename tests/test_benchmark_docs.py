"""The benchmark figures README.md and docs/measured.md show are the JSON's their benchmarks wrote
(benchmarks/render.py): a rendered block that differs from its JSON, a figure typed into one, fails."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RENDER = [sys.executable, str(REPO / "benchmarks" / "render.py")]
BLOCK = re.compile(r"<!-- bench:(\w+) -->(.*?)<!-- /bench:\1 -->", re.S)


def test_every_rendered_block_in_the_docs_is_what_its_json_says():
    run = subprocess.run([*RENDER, "--check"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    blocks = {m.group(1) for doc in ("README.md", "docs/measured.md") for m in BLOCK.finditer((REPO / doc).read_text())}
    assert {"deploy_front_readme", "deploy_front_measured", "plan_counts_measured"} <= blocks


def test_a_figure_typed_into_a_block_or_a_stale_one_fails_the_check(tmp_path):
    text = (REPO / "docs" / "measured.md").read_text()
    block = next(m for m in BLOCK.finditer(text) if m.group(1) == "plan_counts_measured")
    typed = text[:block.start(2)] + block.group(2).replace("100 → 14", "100 → 13") + text[block.end(2):]
    doc = tmp_path / "measured.md"
    doc.write_text(typed)
    run = subprocess.run([*RENDER, "--check", str(doc)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and f"{doc}: plan_counts_measured" in run.stderr
    subprocess.run([*RENDER, str(doc)], check=True, timeout=120)  # rendering puts the JSON's figure back
    assert doc.read_text() == text
    doc.write_text(text.replace("<!-- bench:plan_counts_measured -->", "<!-- bench:no_such_benchmark -->").replace(
        "<!-- /bench:plan_counts_measured -->", "<!-- /bench:no_such_benchmark -->"))
    run = subprocess.run([*RENDER, "--check", str(doc)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "no renderer for block(s) ['no_such_benchmark']" in run.stderr
