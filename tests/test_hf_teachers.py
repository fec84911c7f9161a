"""Hugging Face teachers from local folders (save_pretrained), ensembles and feature distillation, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from kdsearch.config import Config
from kdsearch.core.errors import KdsearchError
from kdsearch.data.dataset import load_dataset
from kdsearch.data.transforms import to_input
from kdsearch.distill.distiller import Distiller, default_hparams, prepare
from kdsearch.teachers import build_teacher

from conftest import tiny_config, write_config
from hf_models import SIZE, tiny_siglip, tiny_vit_classifier

DIGITS = [str(i) for i in range(10)]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PROMPT = "a photo of the number {label}"
SENTINEL = "hf_SENTINEL_do_not_leak_7f3a9c"


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "vit": tiny_vit_classifier(root / "vit", DIGITS[::-1]),  # same names, another order
        "vit_words": tiny_vit_classifier(root / "vit_words", WORDS),
        "siglip": tiny_siglip(root / "siglip", "a photo of the number".split() + DIGITS),
    }


def hf_teacher(hf, mode, **extra):
    model = {"classifier": hf["vit"], "zero_shot": hf["siglip"], "linear_probe": hf["siglip"]}[mode]
    teacher = {"source": "huggingface", "model": str(model), "mode": mode, **extra}
    if mode == "zero_shot":
        teacher.setdefault("prompt", PROMPT)
    return teacher


def cfg_for(tmp_path, teacher, **sections) -> Config:
    return Config.model_validate(tiny_config(tmp_path, teacher=teacher, **sections))


def test_classifier_labels_are_matched_to_the_class_names(tmp_path, hf):
    from transformers import ViTForImageClassification

    cfg = cfg_for(tmp_path, hf_teacher(hf, "classifier"))
    data = load_dataset(cfg)
    teacher = build_teacher(cfg, data, "cpu")
    assert teacher.spec.size == SIZE and teacher.spec.std == (0.25, 0.25, 0.25)  # from its image processor
    ref = ViTForImageClassification.from_pretrained(hf["vit"]).eval()
    x = data.val.x[:4]
    with torch.no_grad():
        expected = ref(pixel_values=to_input(x, teacher.spec, SIZE)).logits
    # the model's label "c" sits at index 9 - c; the teacher's column c must be that output
    assert torch.allclose(teacher.outputs(x)[0], expected[:, [9 - c for c in range(10)]], atol=1e-5)


def test_classifier_missing_class_exits_2_and_label_map_fixes_it(tmp_path, hf, run_cli):
    teacher = {"source": "huggingface", "model": str(hf["vit_words"]), "mode": "classifier"}
    code, _, err = run_cli("train", write_config(tmp_path, tiny_config(tmp_path, teacher=teacher)))
    assert code == 2
    assert "has no label for class '0'" in err and "teacher.label_map" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "train").exists()

    cfg = cfg_for(tmp_path, {**teacher, "label_map": dict(zip(WORDS, DIGITS))})
    data = load_dataset(cfg)
    t = build_teacher(cfg, data, "cpu")
    from transformers import ViTForImageClassification

    ref = ViTForImageClassification.from_pretrained(hf["vit_words"]).eval()
    with torch.no_grad():
        expected = ref(pixel_values=to_input(data.val.x[:3], t.spec, SIZE)).logits
    assert torch.allclose(t.outputs(data.val.x[:3])[0], expected, atol=1e-5)  # "zero" -> "0" keeps the order

    bad = cfg_for(tmp_path, {**teacher, "label_map": {"zeroo": "0"}})
    with pytest.raises(KdsearchError, match="teacher.label_map: 'zeroo' not among the labels"):
        build_teacher(bad, data, "cpu")


def test_zero_shot_logits_are_the_models_image_text_scores(tmp_path, hf):
    from transformers import AutoTokenizer, SiglipModel

    cfg = cfg_for(tmp_path, hf_teacher(hf, "zero_shot"))
    data = load_dataset(cfg)
    teacher = build_teacher(cfg, data, "cpu")
    ref = SiglipModel.from_pretrained(hf["siglip"]).eval()
    tok = AutoTokenizer.from_pretrained(hf["siglip"])
    enc = tok([PROMPT.format(label=c) for c in DIGITS], padding="max_length", max_length=16, return_tensors="pt")
    x = data.val.x[:5]
    with torch.no_grad():
        expected = ref(**enc, pixel_values=to_input(x, teacher.spec, SIZE)).logits_per_image
    assert torch.allclose(teacher.outputs(x)[0], expected, atol=1e-4)
    # features are the normalised image embeddings the head scores
    logits, feats = teacher.outputs(x, features=True)
    assert torch.allclose(feats.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(teacher.head(feats), logits, atol=1e-4)


def test_zero_shot_prompts_per_class(tmp_path, hf):
    prompts = {"3": ["a photo of the number 3", "the number 3"]}
    cfg = cfg_for(tmp_path, hf_teacher(hf, "zero_shot", prompts=prompts))
    data = load_dataset(cfg)
    plain = build_teacher(cfg_for(tmp_path, hf_teacher(hf, "zero_shot")), data, "cpu")
    ensembled = build_teacher(cfg, data, "cpu")
    x = data.val.x[:4]
    a, b = plain.outputs(x)[0], ensembled.outputs(x)[0]
    assert torch.allclose(a[:, [0, 1, 2, 4]], b[:, [0, 1, 2, 4]], atol=1e-5)  # other classes unchanged
    assert not torch.allclose(a[:, 3], b[:, 3], atol=1e-4)  # class 3 averages two prompts
    bad = cfg_for(tmp_path, hf_teacher(hf, "zero_shot", prompts={"melanoma": "x"}))
    with pytest.raises(KdsearchError, match="teacher.prompts: 'melanoma' not a class"):
        build_teacher(bad, data, "cpu")


def test_zero_shot_needs_an_image_text_model(tmp_path, hf):
    cfg = cfg_for(tmp_path, {"source": "huggingface", "model": str(hf["vit"]), "mode": "zero_shot"})
    with pytest.raises(KdsearchError, match="not an image-text model"):
        build_teacher(cfg, load_dataset(cfg), "cpu")


def test_linear_probe_beats_chance_with_one_pass_per_view(tmp_path, hf):
    """A frozen random-weight SigLIP's embeddings + logistic regression: well above chance (0.1) on digits."""
    cfg = cfg_for(tmp_path, hf_teacher(hf, "linear_probe"), data={"image_size": 16})
    prepared = prepare(cfg, "cpu")
    n, n_val = len(prepared.data.train.y), len(prepared.data.val.y)
    assert prepared.targets.forward_passes == n + n_val  # the probe is fitted on the view's features: no extra pass
    assert prepared.teacher_metrics["val_macro_f1"] > 0.5, prepared.teacher_metrics
    member = prepared.teacher.members[0]
    assert member.identity["probe_C"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    # the cached logits are the fitted head on the teacher's features, and a second run reuses them
    again = prepare(cfg, "cpu")
    assert again.targets.forward_passes == 0
    assert torch.equal(again.targets.logits, prepared.targets.logits)
    assert again.teacher_metrics == prepared.teacher_metrics
    # the fitted probe comes back with the cached outputs, so the teacher can still score new images (a test split)
    fitted, restored = member.head.weight, again.teacher.members[0].head.weight
    assert fitted.abs().sum() > 0 and torch.equal(restored, fitted)
    x = prepared.data.val.x[:8]
    assert torch.allclose(again.teacher.members[0].outputs(x)[0], member.outputs(x)[0], atol=1e-5)


def test_unreachable_hub_model_exits_2_naming_hf_token(tmp_path, run_cli):
    teacher = {"source": "huggingface", "model": "google/medsiglip-448", "mode": "linear_probe"}
    code, _, err = run_cli("train", write_config(tmp_path, tiny_config(tmp_path, teacher=teacher)))
    assert code == 2, err
    assert "google/medsiglip-448" in err and "HF_TOKEN" in err and "Traceback" not in err


class _GatedHub(BaseHTTPRequestHandler):
    """Answers every hub request the way huggingface.co answers for a gated model without accepted terms."""

    seen_auth: list[str] = []

    def _gated(self):
        _GatedHub.seen_auth.append(self.headers.get("Authorization", ""))
        self.send_response(403)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model google/medsiglip-448 is restricted.")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _gated

    def log_message(self, *args):
        pass


@pytest.mark.e2e
def test_gated_model_exits_2_and_the_token_reaches_only_the_hub(tmp_path):
    """A real HTTP server plays the hub: kdsearch sends HF_TOKEN to it, and nowhere else (stderr, files)."""
    server = HTTPServer(("127.0.0.1", 0), _GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    teacher = {"source": "huggingface", "model": "google/medsiglip-448", "mode": "linear_probe"}
    path = write_config(tmp_path, tiny_config(tmp_path, teacher=teacher))
    env = {**os.environ, "HF_TOKEN": SENTINEL, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"),
           "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_ETAG_TIMEOUT": "5"}
    try:
        proc = subprocess.run([sys.executable, "-m", "kdsearch", "train", str(path)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gated" in proc.stderr and "HF_TOKEN" in proc.stderr and "google/medsiglip-448" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"Bearer {SENTINEL}" in _GatedHub.seen_auth  # the token authenticates...
    assert SENTINEL not in proc.stdout + proc.stderr  # ...and is never printed
    assert not (tmp_path / "out" / "train").exists()


@pytest.mark.e2e  # three whole `kdsearch train` runs with MLflow; the fast tier checks each mode's outputs above
@pytest.mark.parametrize("mode", ["classifier", "zero_shot", "linear_probe"])
def test_every_mode_drives_train_and_the_token_is_never_written(tmp_path, hf, run_cli, monkeypatch, mode):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts (./mlruns) land in tmp_path and are grepped too
    path = write_config(tmp_path, tiny_config(tmp_path, teacher=hf_teacher(hf, mode)))
    code, out, err = run_cli("train", path)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "train" / "metrics.json").read_text())
    assert report["teacher"]["mode"] == mode and report["teacher"]["source"] == "huggingface"
    assert 0.0 <= report["final"]["val_macro_f1"] <= 1.0
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    assert leaks == [] and SENTINEL not in out + err


def test_ensemble_of_different_input_sizes_caches_each_member_once(tmp_path, hf, run_cli):
    from kdsearch.models.students import create_student

    torch.save(create_student("resnet8", 10, 8).state_dict(), tmp_path / "r8.pt")
    members = [{"source": "checkpoint", "arch": "resnet8", "weights": str(tmp_path / "r8.pt")},  # 8 px, mean 0.5
               hf_teacher(hf, "classifier")]  # 16 px, its processor's std 0.25
    cfg = cfg_for(tmp_path, {"source": "ensemble", "members": members, "weights": [0.25, 0.75]})
    first = prepare(cfg, "cpu")
    n, n_val = len(first.data.train.y), len(first.data.val.y)
    assert [m.spec.size for m in first.teacher.members] == [8, SIZE]
    assert first.targets.forward_passes == 2 * (n + n_val)  # each member once per view and once on val
    assert first.targets.logits.shape == (1, n, 2, 10)
    for i, m in enumerate(first.teacher.members):  # each column is that member on the cached pixels
        assert torch.allclose(first.targets.logits[0, :4, i], m.outputs(first.targets.views.pixels(0, slice(0, 4)))[0],
                              atol=1e-5)
    # new weights: the same member outputs, no teacher work
    reweighted = cfg_for(tmp_path, {"source": "ensemble", "members": members, "weights": [0.9, 0.1]})
    again = prepare(reweighted, "cpu")
    assert again.targets.forward_passes == 0 and torch.equal(again.targets.logits, first.targets.logits)
    # the weights enter the target: the distiller's loss carries them
    d = Distiller(reweighted, default_hparams(reweighted, again.pairs), again, "cpu")
    assert torch.allclose(d.loss.term.teacher_weights, torch.tensor([0.9, 0.1]))
    code, out, err = run_cli("train", write_config(tmp_path, cfg.model_dump(mode="json", by_alias=True)))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "train" / "metrics.json").read_text())
    assert report["teacher"]["source"] == "ensemble" and report["teacher"]["weights"] == [0.25, 0.75]


def test_feature_distillation_trains_an_adapter_on_cached_teacher_features(tmp_path):
    from kdsearch.models.students import create_student

    teacher_net = create_student("resnet8", 10, 8)
    torch.save(teacher_net.state_dict(), tmp_path / "r8.pt")
    cfg = cfg_for(tmp_path, {"source": "checkpoint", "arch": "resnet8", "weights": str(tmp_path / "r8.pt")},
                  search={"space": {"lr": 3.0e-3, "alpha": 0.5, "temperature": 4.0, "batch_size": 64,
                                    "weight_decay": 1.0e-4, "class_weight_power": 0.0,
                                    "feature_weight": {"choice": [0.0, 1.0]}, "feature_loss": "cosine"}})
    prepared = prepare(cfg, "cpu")
    feats = prepared.targets.features
    n = len(prepared.data.train.y)
    assert feats.shape == (1, n, teacher_net.fc.in_features)
    member = prepared.teacher.members[0]
    assert torch.allclose(member.head(feats[0, :8]), prepared.targets.logits[0, :8, 0], atol=1e-4)

    hp = default_hparams(cfg, prepared.pairs)
    assert hp.feature_weight == 0.0  # the first choice: features off

    d = Distiller(cfg, hp.replace(feature_weight=1.0), prepared, "cpu")
    adapter = d.trainee.adapter.weight.detach().clone()
    d.run_epoch()
    assert not torch.equal(adapter, d.trainee.adapter.weight)  # the hint's gradient trains the adapter
    state = d.state_dict()  # a trial checkpoint: the student as exported, the adapter beside it
    assert "adapter" in state and set(state["model"]) == set(d.model.state_dict())
    resumed = Distiller(cfg, hp.replace(feature_weight=1.0), prepared, "cpu")
    resumed.load_state_dict(state)
    assert torch.equal(resumed.trainee.adapter.weight, d.trainee.adapter.weight)
    off = Distiller(cfg, hp, prepared, "cpu")
    assert off.trainee is off.model  # weight 0: plain KD, no adapter


def test_feature_distillation_needs_a_splittable_teacher(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    torch.jit.save(torch.jit.script(net), str(tmp_path / "t.pt"))
    cfg = cfg_for(tmp_path, {"source": "torchscript", "path": str(tmp_path / "t.pt")},
                  search={"space": {"feature_weight": 0.5}})
    with pytest.raises(KdsearchError, match="search.space.feature_weight: the teacher \\(torchscript\\) exposes no"):
        prepare(cfg, "cpu")



@pytest.mark.e2e
def test_search_with_an_ensemble_of_all_three_modes(ray_cluster, tmp_path, hf, monkeypatch):
    """One search: classifier + zero_shot + linear_probe members, searched member weights and feature hints.
    Teacher passes happen once per (member, view) before the trials, none inside them."""
    from mlflow.tracking import MlflowClient

    from kdsearch.deploy.export import export_best
    from kdsearch.search.tuner import run_search

    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.chdir(tmp_path)  # the registered model's artifacts (./mlruns) are grepped too
    members = [hf_teacher(hf, m) for m in ("classifier", "zero_shot", "linear_probe")]
    cfg = Config.model_validate(tiny_config(
        tmp_path, name="hf-search", teacher={"source": "ensemble", "members": members},
        search={"num_samples": 3, "max_concurrent": 2, "max_epochs": 1, "grace_period": 1,
                "space": {"lr": 3.0e-3, "alpha": 0.5, "temperature": 4.0, "batch_size": 64, "weight_decay": 1e-4,
                          "class_weight_power": 0.0, "feature_weight": {"choice": [0.0, 0.5]},
                          "teacher_weights": [{"uniform": [0.0, 1.0]}, {"uniform": [0.0, 1.0]}, 1.0]}}))
    result = run_search(cfg, device="cpu")
    assert sum(result.trials.values()) == 3 and result.trials["errored"] == 0
    n, n_val = 1437, 360
    assert result.teacher_forward_passes == 3 * (n + n_val)
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name("hf-search")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3
    assert all({"teacher_weight_0", "teacher_weight_1", "feature_weight"} <= set(r.data.params) for r in children)
    exported = export_best(cfg)  # the best trial's student loads and re-evaluates, whatever its feature weight
    assert (exported.out_dir / "student.pt").is_file()
    again = run_search(cfg.model_copy(update={"name": "hf-search-2"}), device="cpu")
    assert again.teacher_forward_passes == 0  # a later search reuses every member's cached outputs
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    assert leaks == [] and (tmp_path / "mlruns").is_dir()


def test_the_probe_is_fitted_on_the_plain_images_whatever_the_views(tmp_path, hf):
    """With augmentation on, the probe is still fitted on the unaugmented train images (as a live fit is), so the
    teacher does not depend on the cache or its views."""
    from kdsearch.teachers import build_teachers
    from kdsearch.teachers.cache import fit_heads

    heads = []
    for views in (1, 2):
        cfg = cfg_for(tmp_path / f"v{views}", hf_teacher(hf, "linear_probe", cache_views=views),
                      data={"image_size": 16, "augment": "standard"})
        prepared = prepare(cfg, "cpu")
        heads.append(prepared.teacher.members[0].head.weight.detach().clone())
    plain = build_teachers(cfg, prepared.data, "cpu")
    fit_heads(plain, prepared.data, "cpu")  # the live teacher's fit: on the plain images
    assert torch.allclose(heads[0], heads[1], atol=1e-6)
    assert torch.allclose(heads[0], plain.members[0].head.weight, atol=1e-6)


def test_the_probes_own_training_images_get_out_of_fold_targets(tmp_path, hf):
    """The images a linear probe was fitted on (the train split: with label_budget, every transfer image) are
    labelled by probes that never saw them; val by the probe fitted on all of train. Both figures are recorded."""
    cfg = cfg_for(tmp_path, hf_teacher(hf, "linear_probe"), data={"image_size": 16, "label_budget": 5})
    prepared = prepare(cfg, "cpu")
    member, data, targets = prepared.teacher.members[0], prepared.data, prepared.targets
    n = len(data.train.y)
    in_sample = member.outputs(data.train.x)[0]
    oof = targets.logits[0, :n, 0]
    assert not torch.allclose(oof, in_sample, atol=1e-3)
    assert torch.allclose(targets.val_logits[:, 0], member.outputs(data.val.x)[0], atol=1e-4)

    def nll(logits, y):
        return float(torch.nn.functional.cross_entropy(logits, y))

    fit = member.identity
    assert fit["probe_train_nll_out_of_fold"] == pytest.approx(nll(oof, data.train.y), rel=1e-4)
    assert fit["probe_train_nll_in_sample"] == pytest.approx(nll(in_sample, data.train.y), rel=1e-4)
    assert fit["probe_train_nll_out_of_fold"] > fit["probe_train_nll_in_sample"]  # in-sample is over-confident
    assert fit["probe_train_p_true_out_of_fold"] < fit["probe_train_p_true_in_sample"]
    assert fit["probe_val_nll"] == pytest.approx(nll(targets.val_logits[:, 0], data.val.y), rel=1e-4)


def test_a_live_linear_probe_is_refused(tmp_path, hf, run_cli):
    raw = tiny_config(tmp_path, teacher=hf_teacher(hf, "linear_probe", cache=False))
    code, _, err = run_cli("validate", write_config(tmp_path, raw))
    assert code == 2 and "a linear_probe teacher needs cache: true" in err
