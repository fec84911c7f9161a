"""The contract's loss and every distillation term, checked against hand computations in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsearch.core.labels import UNLABELED
from kdsearch.losses import (
    FeatureHintLoss,
    class_weights,
    create_loss,
    cross_entropy_loss,
    list_losses,
    teacher_log_probs,
)


def _hand_kd(s, t, y, alpha, T, w):
    """loss = (1 - alpha) * CE_w(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)), in float64 loops."""
    n, k = s.shape
    ce_num, ce_den, kl = 0.0, 0.0, 0.0
    for i in range(n):
        logz = math.log(sum(math.exp(v) for v in s[i].tolist()))
        ce_num += w[y[i]].item() * (logz - s[i, y[i]].item())
        ce_den += w[y[i]].item()
        ps = [math.exp(v / T) for v in s[i].tolist()]
        pt = [math.exp(v / T) for v in t[i].tolist()]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        kl += sum(pt[c] * math.log(pt[c] / ps[c]) for c in range(k))
    return (1 - alpha) * ce_num / ce_den + alpha * T * T * kl / n


@pytest.mark.parametrize("alpha,T", [(0.3, 4.0), (0.9, 1.5), (1.0, 8.0)])
def test_matches_hand_computation(alpha, T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g) * 3, torch.randn(6, 4, generator=g) * 3
    y = torch.tensor([0, 1, 2, 3, 0, 0])
    w = class_weights(torch.tensor([30, 10, 5, 1]), 0.7)
    got = create_loss("kd", alpha=alpha, temperature=T, weight=w)(s, y, t)
    assert got.item() == pytest.approx(_hand_kd(s, t, y, alpha, T, w), rel=1e-5)


def test_alpha_zero_is_weighted_cross_entropy_and_needs_no_teacher():
    s, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    w = torch.tensor([0.5, 1.0, 1.5])
    for name in list_losses():
        loss = create_loss(name, alpha=0.0, temperature=4.0, weight=w)
        assert torch.allclose(loss(s, y), F.cross_entropy(s, y, weight=w))
        assert torch.allclose(loss(s, y, torch.randn(8, 3)), F.cross_entropy(s, y, weight=w))
    assert torch.allclose(cross_entropy_loss(w)(s, y), F.cross_entropy(s, y, weight=w))


def test_t_squared_factor():
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.zeros(5, dtype=torch.long)
    for T in (1.0, 2.0, 5.0):
        kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
        assert create_loss("kd", 1.0, T)(s, y, t).item() == pytest.approx(T * T * kl.item(), rel=1e-5)


def test_kd_term_is_zero_when_student_matches_teacher():
    t = torch.randn(4, 5)
    y = t.argmax(1)
    assert create_loss("kd", 1.0, 3.0)(t.clone(), y, t).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_positive_without_teacher_is_an_error():
    with pytest.raises(ValueError, match="teacher logits"):
        create_loss("kd", 0.5, 2.0)(torch.randn(2, 3), torch.tensor([0, 1]))


def test_class_weights_power():
    counts = torch.tensor([100, 50, 10])
    assert torch.allclose(class_weights(counts, 0.0), torch.ones(3))
    balanced = class_weights(counts, 1.0)
    assert balanced.mean().item() == pytest.approx(1.0)
    products = balanced * counts
    assert torch.allclose(products, products[0].expand(3))  # w_c * n_c constant: balanced
    half = class_weights(counts, 0.5)
    assert half[2] / half[0] == pytest.approx(math.sqrt(10), rel=1e-5)


def test_ensemble_target_is_the_weighted_mean_of_member_probabilities():
    g = torch.Generator().manual_seed(1)
    members = torch.randn(5, 3, 4, generator=g) * 3  # [B, M, K]
    w = torch.tensor([0.2, 0.5, 0.3])
    T = 2.5
    expected = sum(w[m] * F.softmax(members[:, m] / T, dim=1) for m in range(3))
    assert torch.allclose(teacher_log_probs(members, T, w).exp(), expected, atol=1e-6)
    # unnormalised weights mean the same; one member is that member's softmax
    assert torch.allclose(teacher_log_probs(members, T, w * 7), teacher_log_probs(members, T, w), atol=1e-6)
    assert torch.allclose(teacher_log_probs(members[:, :1], T), F.log_softmax(members[:, 0] / T, dim=1))
    # the KD loss with member logits equals the KD loss against the combined target
    s, y = torch.randn(5, 4, generator=g), torch.tensor([0, 1, 2, 3, 0])
    kd = create_loss("kd", alpha=0.7, temperature=T, teacher_weights=w)(s, y, members)
    combined = T * teacher_log_probs(members, T, w)  # logits whose softmax at T is the ensemble target
    assert kd.item() == pytest.approx(create_loss("kd", alpha=0.7, temperature=T)(s, y, combined).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_loss_adds_the_weighted_hint(kind):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    fs, ft = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    kd = create_loss("kd", alpha=0.5, temperature=2.0)
    loss = FeatureHintLoss(kd, feature_weight=0.3, kind=kind)
    hint = F.mse_loss(fs, ft) if kind == "mse" else (1 - F.cosine_similarity(fs, ft, dim=1)).mean()
    assert loss((s, fs), y, (t, ft)).item() == pytest.approx((kd(s, y, t) + 0.3 * hint).item(), rel=1e-6)
    # a student whose mapped features match the teacher's pays no hint
    assert loss((s, ft), y, (t, ft)).item() == pytest.approx(kd(s, y, t).item(), abs=1e-6)


# --------------------------------------------------------------------------- the loss menu, by hand in float64


def _softmax(v, T=1.0):
    e = [math.exp(x / T) for x in v]
    return [x / sum(e) for x in e]


def _mix(members, T, w):
    """The ensemble's target distribution: sum_m w_m softmax(t_m / T) (one member: its softmax)."""
    w = [x / sum(w) for x in w]
    ps = [_softmax(m, T) for m in members]
    return [sum(w[m] * ps[m][c] for m in range(len(members))) for c in range(len(members[0]))]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _z(v):
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return [(x - mean) / (std + 1e-7) for x in v]


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b)) + 1e-8)


def _hand_terms(name, s, t, y, T, w, dkd_beta):
    """D per sample for `name`, from lists: s [B][K], t [B][M][K], y [B] (target classes)."""
    B = len(s)
    if name == "kd":
        return [T * T * _kl(_mix(t[i], T, w), _softmax(s[i], T)) for i in range(B)]
    if name == "kd_ls":
        return [T * T * _kl(_mix([_z(m) for m in t[i]], T, w), _softmax(_z(s[i]), T)) for i in range(B)]
    if name == "dist":
        ys, yt = [_softmax(s[i], T) for i in range(B)], [_mix(t[i], T, w) for i in range(B)]
        K = len(ys[0])
        intra = 1 - sum(_pearson([ys[i][c] for i in range(B)], [yt[i][c] for i in range(B)]) for c in range(K)) / K
        return [T * T * ((1 - _pearson(ys[i], yt[i])) + intra) for i in range(B)]
    out = []  # dkd
    for i in range(B):
        ps, pt, g = _softmax(s[i], T), _mix(t[i], T, w), y[i]
        tckd = _kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        nt_s = [ps[c] / (1 - ps[g]) for c in range(len(ps)) if c != g]
        nt_t = [pt[c] / (1 - pt[g]) for c in range(len(pt)) if c != g]
        out.append(T * T * (tckd + dkd_beta * _kl(nt_t, nt_s)))
    return out


def _hand_loss(name, s, t, y, alpha, T, w_class, w_members, dkd_beta=1.0):
    """(1 - alpha) (n_L/B) CE_w over labeled images + mean_i c_i D_i, c_i = alpha (labeled) or 1 (transfer);
    a transfer image's target class for DKD is the ensemble's argmax."""
    B = len(s)
    targets = [yi if yi != UNLABELED else max(range(len(s[0])), key=lambda c: _mix(t[i], 1.0, w_members)[c])
               for i, yi in enumerate(y)]
    d = _hand_terms(name, s, t, targets, T, w_members, dkd_beta)
    labeled = [i for i in range(B) if y[i] != UNLABELED]
    ce = 0.0
    if labeled:
        num = sum(w_class[y[i]] * -math.log(_softmax(s[i])[y[i]]) for i in labeled)
        ce = num / sum(w_class[y[i]] for i in labeled) * len(labeled) / B
    return (1 - alpha) * ce + sum((alpha if y[i] != UNLABELED else 1.0) * d[i] for i in range(B)) / B


def _batch(seed, members=1):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(7, 5, generator=g) * 3).double()
    t = (torch.randn(7, members, 5, generator=g) * 4).double()
    return s, t


@pytest.mark.parametrize("name", ["kd", "dist", "kd_ls", "dkd"])
@pytest.mark.parametrize("members", [1, 3])
def test_each_loss_matches_its_hand_computation(name, members):
    s, t = _batch(3, members)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 0])
    w_class = class_weights(torch.tensor([40, 10, 5, 2, 1]), 0.8).double()
    w_members = torch.tensor([0.2, 0.5, 0.3][:members], dtype=torch.float64)
    T, alpha, beta = 3.0, 0.6, 2.5
    got = create_loss(name, alpha=alpha, temperature=T, weight=w_class, teacher_weights=w_members, dkd_beta=beta)(
        s, y, t if members > 1 else t[:, 0])
    want = _hand_loss(name, s.tolist(), t.tolist(), y.tolist(), alpha, T, w_class.tolist(), w_members.tolist(), beta)
    assert got.item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("name", ["kd", "dist", "kd_ls", "dkd"])
def test_transfer_images_get_the_distillation_term_only(name):
    s, t = _batch(4, members=2)
    y = torch.tensor([2, UNLABELED, 0, UNLABELED, UNLABELED, 4, 1])
    w_class = class_weights(torch.tensor([9, 3, 3, 1, 1]), 1.0).double()
    w_members = torch.tensor([0.7, 0.3], dtype=torch.float64)
    loss = create_loss(name, alpha=0.4, temperature=2.0, weight=w_class, teacher_weights=w_members, dkd_beta=4.0)
    want = _hand_loss(name, s.tolist(), t.tolist(), y.tolist(), 0.4, 2.0, w_class.tolist(), w_members.tolist(), 4.0)
    assert loss(s, y, t).item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("name", ["kd", "dist", "kd_ls", "dkd"])
def test_a_batch_of_transfer_images_has_no_cross_entropy_gradient(name):
    """Only D moves the student: its gradient equals alpha-free D's, and a student equal to the teacher gets 0."""
    _, t = _batch(5)
    t = t[:, 0]
    y = torch.full((7,), UNLABELED)
    start = torch.randn(7, 5, dtype=torch.float64)
    grads = []
    for alpha in (0.1, 0.9):  # (1 - alpha) would scale a CE term; D's weight on transfer images is 1 whatever alpha
        s = start.clone().requires_grad_(True)
        create_loss(name, alpha=alpha, temperature=2.0)(s, y, t).backward()
        grads.append(s.grad)
    assert torch.allclose(grads[0], grads[1])
    s = start.clone().requires_grad_(True)  # alpha = 1: no CE at all, labeled or not
    create_loss(name, alpha=1.0, temperature=2.0)(s, y, t).backward()
    assert torch.allclose(grads[0], s.grad) and s.grad.abs().max() > 0
    same = t.clone().requires_grad_(True)
    create_loss(name, alpha=0.5, temperature=2.0)(same, y, t).backward()
    assert same.grad.abs().max().item() < 1e-6
    # and with alpha = 0 no teacher is needed and nothing is learned from them
    z = torch.randn(7, 5, requires_grad=True)
    create_loss(name, alpha=0.0, temperature=2.0)(z, y).backward()
    assert z.grad.abs().max().item() == 0.0


def test_dkd_reproduces_kd_with_the_papers_coupling():
    """Zhao et al.'s eq. 3: KD = TCKD + (1 - p_t(y)) * NCKD, so DKD with dkd_beta = 1 - p_t(y) is KD, per sample."""
    s, t = _batch(6)
    for i, y in enumerate([0, 3, 4]):
        si, ti, yi = s[i:i + 1], t[i:i + 1, 0], torch.tensor([y])
        beta = 1.0 - F.softmax(ti / 2.0, dim=1)[0, y].item()
        kd = create_loss("kd", alpha=1.0, temperature=2.0)(si, yi, ti)
        dkd = create_loss("dkd", alpha=1.0, temperature=2.0, dkd_beta=beta)(si, yi, ti)
        assert dkd.item() == pytest.approx(kd.item(), rel=1e-9)


def test_start_points_put_each_loss_at_its_papers_settings_inside_the_users_ranges():
    from kdsearch.config import Space
    from kdsearch.search.tune_space import start_points

    space = Space.model_validate({"loss": {"choice": ["kd", "dist", "kd_ls", "dkd"]}, "dkd_beta": {"uniform": [0.5,
                                                                                                               4.0]},
                                  "temperature": {"uniform": [1.5, 3.0]}, "alpha": {"uniform": [0.1, 1.0]},
                                  "lr": {"loguniform": [1.0e-3, 1.0e-1]}, "batch_size": {"choice": [64, 128]}})
    points = start_points(space, [("resnet8", "fp32"), ("mobilenet_v3_small", "fp32")])
    low = points.pop(1)  # the low-alpha hedge after the first (alpha's range has no 0: no no-KD control)
    assert low == {**points[0], "alpha": 0.25}
    by_loss = {p["loss"]: p for p in points}
    assert list(by_loss) == ["kd", "dist", "kd_ls", "dkd"]
    assert (by_loss["kd"]["temperature"], by_loss["kd"]["alpha"]) == (3.0, 0.9)  # T=4 clipped to the space's 3
    assert (by_loss["dist"]["temperature"], by_loss["dist"]["alpha"]) == (1.5, 0.5)  # tau 1 clipped up
    assert by_loss["kd_ls"]["temperature"] == 2.0 and by_loss["dkd"]["dkd_beta"] == 4.0  # beta 8 clipped down
    assert by_loss["kd"]["dkd_beta"] == 2.25  # keys a paper says nothing about: the range's midpoint
    for p in points:  # every searched key, as Optuna's enqueue needs; the geometric midpoint of lr
        assert set(p) == {"loss", "dkd_beta", "temperature", "alpha", "lr", "weight_decay", "batch_size",
                          "class_weight_power", "student"}
        assert p["lr"] == pytest.approx(1.0e-2) and p["batch_size"] == 64
    assert [p["student"] for p in points] == ["resnet8", "mobilenet_v3_small"] * 2


def test_start_points_bracket_the_teachers_usefulness_with_a_no_kd_control_and_a_low_alpha():
    from kdsearch.config import Space
    from kdsearch.search.tune_space import start_points

    space = Space.model_validate({"alpha": {"uniform": [0.0, 1.0]}, "feature_weight": {"uniform": [0.0, 2.0]},
                                  "lr": {"loguniform": [1.0e-3, 1.0e-1]}})
    points = start_points(space, [("resnet8", "fp32"), ("mobilenet_v3_small", "fp32")])
    paper, control, low = points[:3]
    assert paper["alpha"] == 0.9 and control == {**paper, "alpha": 0.0, "feature_weight": 0.0}
    assert low == {**paper, "alpha": 0.25} and len(points) == 3  # the same student and lr: only alpha differs
    fixed = start_points(Space.model_validate({"alpha": 0.5, "lr": {"loguniform": [1.0e-3, 1.0e-1]}}),
                         [("resnet8", "fp32")])
    assert len(fixed) == 1  # alpha not searched: nothing to bracket
