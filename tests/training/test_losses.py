"""Consistency regularization: zero when the paths agree; gradients reach what the variant says."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from koemo.errors import KoemoError
from koemo.fusion import build_fusion
from koemo.training.losses import CRVariant, class_weights, cr_sum, kl_sum

VARIANTS = [
    CRVariant(lam=0.7, ce_path=c, kl=k, detach_target=d)
    for c, k, d in itertools.product(("gold", "stt"), ("gold||stt", "stt||gold"), (True, False))
]


def logits(seed, shape=(5, 4)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_cr_is_ce_alone_when_paths_agree(variant):
    g = logits(0)
    y = torch.tensor([0, 1, 2, 3, 0])
    total, parts = cr_sum(g, g.clone(), y, variant)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)
    assert float(total) == pytest.approx(float(F.cross_entropy(g, y, reduction="sum")), rel=1e-6)


def test_kl_matches_torch_and_directions_differ():
    p, q = logits(1), logits(2)
    ref = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), reduction="sum", log_target=True)
    assert float(kl_sum(p, q)) == pytest.approx(float(ref), rel=1e-5)
    assert float(kl_sum(p, q)) != pytest.approx(float(kl_sum(q, p)), rel=1e-3)
    y = torch.zeros(5, dtype=torch.long)
    a, _ = cr_sum(p, q, y, CRVariant(kl="gold||stt"))
    b, _ = cr_sum(p, q, y, CRVariant(kl="stt||gold"))
    assert float(a) != pytest.approx(float(b))


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_gradient_flow_on_logits(variant):
    """Which path's logits receive which gradient, compared with the loss written out by hand."""
    g = logits(3).requires_grad_(True)
    s = logits(4).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 1])
    total, _ = cr_sum(g, s, y, variant)
    gg, gs = torch.autograd.grad(total, (g, s), allow_unused=True)
    gg = torch.zeros_like(g) if gg is None else gg  # golden path not in the graph at all

    # expected: CE gradient on the CE path; KL gradient on STT always; on gold only without detach
    g2, s2 = g.detach().clone().requires_grad_(True), s.detach().clone().requires_grad_(True)
    ce = F.cross_entropy(g2 if variant.ce_path == "gold" else s2, y, reduction="sum")
    kl = kl_sum(g2, s2) if variant.kl == "gold||stt" else kl_sum(s2, g2)
    ce_g, ce_s = torch.autograd.grad(ce, (g2, s2), allow_unused=True)
    kl_g, kl_s = torch.autograd.grad(kl, (g2, s2))
    zero = torch.zeros_like(g)
    exp_g = (ce_g if ce_g is not None else zero) + (0 if variant.detach_target else variant.lam * kl_g)
    exp_s = (ce_s if ce_s is not None else zero) + variant.lam * kl_s
    torch.testing.assert_close(gg, exp_g)
    torch.testing.assert_close(gs, exp_s)
    assert kl_g.abs().sum() > 0 and kl_s.abs().sum() > 0
    if variant.detach_target and variant.ce_path == "stt":
        assert (gg == 0).all()  # the golden path gets nothing at all


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_gradient_reaches_the_right_text_path_through_a_model(variant):
    """Through a fusion model: the golden text input gets a gradient only if the variant sends one;
    the shared parameters always do."""
    torch.manual_seed(0)
    model = build_fusion("shallow", 3, 4, 3, hidden=8, heads=2, dropout=0.0)
    audio = torch.randn(2, 5, 3)
    am = torch.ones(2, 5, dtype=torch.bool)
    gold = torch.randn(2, 4, 4, requires_grad=True)
    stt = torch.randn(2, 4, 4, requires_grad=True)
    tm = torch.ones(2, 4, dtype=torch.bool)
    y = torch.tensor([0, 2])
    total, _ = cr_sum(model(audio, am, gold, tm), model(audio, am, stt, tm), y, variant)
    total.backward()
    gold_gets = not (variant.detach_target and variant.ce_path == "stt")
    assert (gold.grad is not None and gold.grad.abs().sum() > 0) == gold_gets
    assert stt.grad is not None and stt.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_lambda_zero_is_plain_ce_and_bad_variants_refused():
    g, s = logits(5), logits(6)
    y = torch.tensor([0, 1, 2, 3, 1])
    total, _ = cr_sum(g, s, y, CRVariant(lam=0.0, ce_path="stt"))
    assert float(total) == pytest.approx(float(F.cross_entropy(s, y, reduction="sum")))
    with pytest.raises(KoemoError, match="cr_kl"):
        CRVariant(kl="p||q")
    with pytest.raises(KoemoError, match="cr_ce_path"):
        CRVariant(ce_path="both")


def test_class_weights_balanced():
    w = class_weights([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])


def test_cr_weights_the_cross_entropy_by_class_and_reports_its_parts():
    """Class weights reach CR's cross-entropy (not its KL); the logged parts are the two sums."""
    from koemo.training.losses import ce_per_example, cr_per_example, kl_per_example

    torch.manual_seed(0)
    gold, stt = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([0.5, 1.0, 3.0])
    ce, kl = cr_per_example(gold, stt, y, CRVariant(), w)
    torch.testing.assert_close(ce, ce_per_example(gold, y) * w[y])
    torch.testing.assert_close(kl, kl_per_example(gold, stt))
    table = torch.rand(6, 3) + 0.5  # one row of class weights per example (stacked folds)
    torch.testing.assert_close(ce_per_example(gold, y, table), ce_per_example(gold, y) * table[torch.arange(6), y])
    total, parts = cr_sum(gold, stt, y, CRVariant(lam=2.0), w)
    assert set(parts) == {"ce", "kl"}
    assert parts["ce"] == pytest.approx(float(ce.sum()), rel=1e-6)
    assert parts["kl"] == pytest.approx(float(kl.sum()), rel=1e-6)
    assert float(total) == pytest.approx(parts["ce"] + 2.0 * parts["kl"], rel=1e-6)


def test_bad_cr_settings_say_which_setting_and_the_choices():
    with pytest.raises(KoemoError, match=r"train.cr_ce_path must be one of gold, stt, got 'x'"):
        CRVariant(ce_path="x")
    with pytest.raises(KoemoError, match=r"train.cr_kl must be one of gold\|\|stt, stt\|\|gold, got 'x'"):
        CRVariant(kl="x")
    with pytest.raises(KoemoError, match=r"train.cr_lambda must be >= 0, got -1"):
        CRVariant(lam=-1)
