"""The contract's loss, checked against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsearch.losses import KDLoss, class_weights, create_loss, teacher_log_probs


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
    assert torch.allclose(KDLoss(0.0, 4.0, w)(s, y), F.cross_entropy(s, y, weight=w))
    assert torch.allclose(KDLoss(0.0, 4.0, w)(s, y, torch.randn(8, 3)), F.cross_entropy(s, y, weight=w))


def test_t_squared_factor():
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.zeros(5, dtype=torch.long)
    for T in (1.0, 2.0, 5.0):
        kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
        assert KDLoss(1.0, T)(s, y, t).item() == pytest.approx(T * T * kl.item(), rel=1e-5)


def test_kd_term_is_zero_when_student_matches_teacher():
    t = torch.randn(4, 5)
    y = t.argmax(1)
    assert KDLoss(1.0, 3.0)(t.clone(), y, t).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_positive_without_teacher_is_an_error():
    with pytest.raises(ValueError, match="teacher logits"):
        KDLoss(0.5, 2.0)(torch.randn(2, 3), torch.tensor([0, 1]))


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
    loss = create_loss("kd+features", kd=kd, feature_weight=0.3, kind=kind)
    hint = F.mse_loss(fs, ft) if kind == "mse" else (1 - F.cosine_similarity(fs, ft, dim=1)).mean()
    assert loss((s, fs), y, (t, ft)).item() == pytest.approx((kd(s, y, t) + 0.3 * hint).item(), rel=1e-6)
    # a student whose mapped features match the teacher's pays no hint
    assert loss((s, ft), y, (t, ft)).item() == pytest.approx(kd(s, y, t).item(), abs=1e-6)
