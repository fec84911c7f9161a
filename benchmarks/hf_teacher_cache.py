"""Teacher seconds per search, with and without the teacher-output cache, for a transformer teacher on digits.

    python benchmarks/hf_teacher_cache.py [--samples 8] [--epochs 4] [--out benchmarks/results/hf_teacher_cache.json]

Builds a SigLIP with ViT-Tiny's vision tower (12 layers, width 192, 3 heads;
random weights: timing does not depend on them) as a local Hugging Face folder,
then runs the digits search three times with it as a `linear_probe` teacher:
cached and cold (outputs computed once), cached again (a second search), and
live (`teacher.cache: false`, the teacher in every trial's loop). Writes JSON
with the teacher's seconds and forward passes for each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def build_teacher(folder: Path, image_size: int = 32) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    vit_tiny = {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "intermediate_size": 768}
    torch.manual_seed(0)
    config = SiglipConfig(vision_config={**vit_tiny, "image_size": image_size, "patch_size": 4},
                          text_config={**vit_tiny, "num_hidden_layers": 1, "vocab_size": 2,
                                       "max_position_embeddings": 16, "bos_token_id": None, "eos_token_id": None})
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hf_teacher_cache.json")
    args = parser.parse_args()

    from kdsearch.config import Config
    from kdsearch.search.tuner import init_ray, run_search

    root = REPO / "runs" / "bench-hf"  # scratch, made anew; only the JSON (--out) is committed
    shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    teacher_dir = build_teacher(root / "siglip-vit-tiny")
    raw = yaml.safe_load((REPO / "search_spaces" / "digits.yaml").read_text())
    raw["teacher"] = {"source": "huggingface", "model": str(teacher_dir), "mode": "linear_probe", "batch_size": 256}
    raw["search"].update(num_samples=args.samples, max_epochs=args.epochs)
    raw["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}"}
    raw["output"] = {"dir": str(root / "out")}
    init_ray(None)
    runs = {}
    for name, cache in (("cached_cold", True), ("cached_again", True), ("live", False)):
        cfg = Config.model_validate({**raw, "name": f"bench-hf-{name.replace('_', '-')}",
                                     "teacher": {**raw["teacher"], "cache": cache}})
        start = time.perf_counter()
        result = run_search(cfg, device="cpu")
        runs[name] = {"teacher_seconds": result.teacher_seconds,
                      "teacher_forward_passes": result.teacher_forward_passes,
                      "search_wall_seconds": time.perf_counter() - start, "trial_epochs": result.trial_epochs,
                      "trials": result.trials,
                      "best_val_macro_f1": result.best["metrics"]["val_macro_f1"] if result.best else None}
        print(name, json.dumps(runs[name]))
    out = {"teacher": "SigLIP, ViT-Tiny vision tower (12 x 192), 32 px, linear_probe", "data": "digits",
           "samples": args.samples, "max_epochs": args.epochs, "cpus": torch.get_num_threads(),
           "torch": torch.__version__, "runs": runs}
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
