"""Faithfulness of RD, RRD, DE and HTD to their references (issue 13 items 1, 2, 5, 7).

* RD's dynamic rank-estimation samples exclude the user's training items and are uniform over
  the rest (graytowne/rank_distill ``_generate_negative_samples``; chengang95/UnKD and
  woriazzc/KDs ``Sample_neg``).
* ``reduction="per_interaction"``: against RecBole's batch-*mean* BPR, the adapter keeps the
  references' ratio ``lambda * sum_users(L) / BPR_sum`` exactly (references: batch-sum BPR, sums
  over the batch's unique users / entities).
* DE / HTD anneal the Gumbel temperature over the references' fixed horizon (1000 / 100 epochs),
  not over the configured epochs.
* DE's selected-experts path equals the all-experts path (values and every gradient) when the
  selection is one-hot (float64).
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from recsys.losses import DE, HTD, DistillationExperts, de_loss, gumbel_noise
from recsys.losses._base import reduce_rows
from recsys.losses.de import SPARSE_MAX_FRACTION, experts_mixture
from recsys.recbole.context import DistillContext
from recsys.recbole.methods import RDAdapter
from recsys.softlabels import as_history

HAVE_RECBOLE = importlib.util.find_spec("recbole") is not None
if HAVE_RECBOLE:  # the plugin tests' fixtures: a 40-user slice of ml-100k and a BPR teacher
    from tests.recsys.recbole.conftest import (  # noqa: F401
        _one_thread,
        base_config,
        data_root,
        distill_setup,
        run_dir,
        teacher_file,
    )

needs_recbole = pytest.mark.skipif(not HAVE_RECBOLE, reason="needs RecBole")


# ----------------------------------------------------------------------------- item 1: RD
def _toy_context(history: list[list[int]], n_items: int) -> DistillContext:
    ptr = torch.tensor([0] + [len(h) for h in history]).cumsum(0)
    col = torch.tensor([i for h in history for i in h], dtype=torch.long)
    return DistillContext(
        student=nn.Module(), teacher=nn.Module(), user_field="user_id", item_field="item_id",
        neg_item_field="neg_item_id", n_users=len(history), n_items=n_items,
        history=as_history((ptr, col), n_items), item_popularity=torch.zeros(n_items))


def test_rd_dynamic_samples_exclude_history_and_are_uniform_over_the_rest():
    history = [[], [1, 2], [3, 4, 5], [2, 6]]  # user 0 = RecBole's padding user
    n_items, eps, epochs = 7, 30, 1000
    ctx = _toy_context(history, n_items)
    ad = RDAdapter(ctx, {**RDAdapter.defaults, "dynamic_start_epoch": 0,
                         "num_dynamic_samples": eps})
    ad.on_epoch_start(0)
    first = ad.sampled.clone()
    assert first.shape == (len(history), eps)
    draws = [first]
    for epoch in range(1, epochs):  # redrawn each epoch
        ad.on_epoch_start(epoch)
        draws.append(ad.sampled)
    sampled = torch.cat(draws, 1)
    total = sampled.shape[1]
    for u, hist in enumerate(history):
        allowed = sorted(set(range(1, n_items)) - set(hist))  # padding item 0 never
        counts = torch.bincount(sampled[u], minlength=n_items)
        assert counts[[0, *hist]].sum() == 0, (u, counts.tolist())  # history excluded
        # i.i.d. uniform over the complement (with replacement, as the references)
        p = 1.0 / len(allowed)
        sd = math.sqrt(total * p * (1 - p))
        for i in allowed:
            assert abs(int(counts[i]) - total * p) < 5 * sd, (u, i, counts.tolist())
        chi2 = sum((int(counts[i]) - total * p) ** 2 / (total * p) for i in allowed)
        assert chi2 < 30.0  # df <= 5: p-value ~1e-5
    # redrawn each epoch, reproducibly from the adapter's seeded generator
    assert not torch.equal(draws[1], first)
    ad2 = RDAdapter(ctx, {**RDAdapter.defaults, "dynamic_start_epoch": 0,
                          "num_dynamic_samples": eps})
    ad2.on_epoch_start(0)
    assert torch.equal(ad2.sampled, first)


# ----------------------------------------------------------------------------- item 2: reductions
def test_per_interaction_reduction_divides_the_sum_by_the_interaction_count():
    per_user = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert reduce_rows(per_user, "per_interaction", num_interactions=8) == 7.0 / 8
    with pytest.raises(ValueError, match="num_interactions"):
        reduce_rows(per_user, "per_interaction")


def _setup(method, base_config, teacher_file, run_dir, **kw):
    cfg, data, model, _ = distill_setup(method, base_config, teacher_file, run_dir, **kw)
    model = model.double()  # float64: the ratios below are compared to ~1e-12
    model.prepare()
    model.on_epoch_start(0)
    return cfg, model, next(iter(data[0]))


def _bpr_sum(model, batch):
    """The references' BPR: a *sum* over the batch's interactions (RecBole's gamma=1e-10)."""
    u, i = model.student.user_embedding.weight, model.student.item_embedding.weight
    users, pos, neg = batch["user_id"], batch["item_id"], batch["neg_item_id"]
    diff = (u[users] * i[pos]).sum(-1) - (u[users] * i[neg]).sum(-1)
    return -torch.log(1e-10 + torch.sigmoid(diff)).sum()


def _assert_reference_ratio(cfg, model, batch, reference_sum):
    own, distill = model.calculate_loss(batch)  # RecBole's batch-mean BPR, lambda * method
    users = batch["user_id"]
    assert torch.unique(users).numel() < users.numel()  # repeated users: mean != per-interaction
    lam = cfg["distill_weight"]
    torch.testing.assert_close(distill / own, lam * reference_sum / _bpr_sum(model, batch),
                               rtol=1e-12, atol=0)


@needs_recbole
def test_rrd_keeps_the_reference_lambda_against_recbole_bpr_mean(base_config, teacher_file,
                                                                 run_dir):
    cfg, model, batch = _setup("rrd", base_config, teacher_file, run_dir,
                               distill_params={"k": 6, "l": 5, "m": 30})
    assert cfg["distill_params"]["reduction"] == "per_interaction"  # the shipped default
    interesting, boring = model.distill.tables
    u, i = model.student.user_embedding.weight, model.student.item_embedding.weight
    total = 0.0
    for user in torch.unique(batch["user_id"]).tolist():  # reference: sum over unique users
        s = u[user] @ i[interesting[user]].T
        n = u[user] @ i[boring[user]].T
        for k in range(s.numel()):
            total = total + torch.logsumexp(torch.cat([s[k:], n]), 0) - s[k]
    _assert_reference_ratio(cfg, model, batch, total)


def _reference_de_side(experts: DistillationExperts, s, t):
    """DE-RRD's get_DE_loss (Models/DE.py): experts one by one, sum over the entities."""
    sel = torch.log_softmax(experts.selection(t), -1)
    g = gumbel_noise(tuple(sel.shape), dtype=sel.dtype)  # the same draw order as the adapter
    alpha = torch.softmax((sel + g) / experts.tau, -1)
    outs = [torch.relu(s @ experts.w1[k] + experts.b1[k]) @ experts.w2[k] + experts.b2[k]
            for k in range(experts.w1.shape[0])]
    pred = (torch.stack(outs, -1) * alpha.unsqueeze(1)).sum(-1)
    return ((t - pred) ** 2).sum(-1).sum()


@needs_recbole
def test_de_keeps_the_reference_lambda_against_recbole_bpr_mean(base_config, teacher_file,
                                                                run_dir):
    cfg, model, batch = _setup("de", base_config, teacher_file, run_dir,
                               distill_params={"num_experts": 3, "max_entities": None})
    assert cfg["distill_params"]["reduction"] == "per_interaction"
    de = model.distill.loss
    su, si = model.student.user_embedding.weight, model.student.item_embedding.weight
    tu, ti = model.teacher.user_embedding.weight, model.teacher.item_embedding.weight
    users = torch.unique(batch["user_id"])
    pos, neg = torch.unique(batch["item_id"]), torch.unique(batch["neg_item_id"])
    torch.manual_seed(11)
    ref = _reference_de_side(de.users, su[users], tu[users]) + 0.5 * (
        _reference_de_side(de.items, si[pos], ti[pos])
        + _reference_de_side(de.items, si[neg], ti[neg]))
    torch.manual_seed(11)
    _assert_reference_ratio(cfg, model, batch, ref)


@needs_recbole
def test_de_subsampled_entities_estimate_the_full_sum(base_config, teacher_file, run_dir):
    """With ``max_entities``, each kind's kept sum is scaled by unique / kept."""
    cfg, model, batch = _setup("de", base_config, teacher_file, run_dir,
                               distill_params={"num_experts": 3, "max_entities": 5})
    ad = model.distill
    state = ad.generator.get_state()
    (users, pos, neg), counts = ad.entities_and_counts(batch)
    assert [users.numel(), pos.numel(), neg.numel()] == [5, 5, 5] and min(counts) > 5
    su, si = model.student.user_embedding.weight, model.student.item_embedding.weight
    tu, ti = model.teacher.user_embedding.weight, model.teacher.item_embedding.weight
    b = batch["user_id"].numel()
    torch.manual_seed(4)
    ref = (_reference_de_side(ad.loss.users, su[users], tu[users]) * counts[0] / 5
           + 0.5 * (_reference_de_side(ad.loss.items, si[pos], ti[pos]) * counts[1] / 5
                    + _reference_de_side(ad.loss.items, si[neg], ti[neg]) * counts[2] / 5)) / b
    ad.generator.set_state(state)  # the same subsample
    torch.manual_seed(4)
    torch.testing.assert_close(ad(batch), ref, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- item 5: horizon
@needs_recbole
@pytest.mark.parametrize("method, horizon", [("de", 1000), ("htd", 100), ("de_rrd", 1000)])
def test_gumbel_temperature_follows_the_reference_horizon(base_config, teacher_file, run_dir,
                                                          method, horizon):
    small = {"de": {"num_experts": 2}, "htd": {"num_experts": 2},
             "de_rrd": {"de": {"num_experts": 2}, "rrd": {"k": 6, "l": 5, "m": 30}}}
    cfg, data, model, _ = distill_setup(method, base_config, teacher_file, run_dir,
                                        distill_params=small[method], epochs=40)
    assert cfg["epochs"] == 40
    model.prepare()
    model.on_epoch_start(20)
    loss = (model.distill.methods["de"] if method == "de_rrd" else model.distill).loss
    end_t, anneal = 1e-10, 1e10  # the references' schedule (DE-RRD run.py, TD notebook)
    ref = max(end_t * anneal * ((1.0 / anneal) ** (20 / horizon)), end_t)
    assert loss.anneal_epochs == horizon
    assert loss.users.tau == loss.items.tau == pytest.approx(ref, rel=1e-12)


def test_anneal_epochs_none_follows_the_configured_epochs():
    m = HTD(3, 6, num_experts=2, anneal_epochs=None)
    m.set_epoch(20, 40)
    assert m.users.tau == pytest.approx(1e-5, rel=1e-12)
    assert DE(3, 6).anneal_epochs == 1000 and HTD(3, 6).anneal_epochs == 100


# ----------------------------------------------------------------------------- item 7: cost
def _de_grads(path, tau, *, seed=0, b=40, e=6, d_s=5, d_t=9):
    torch.manual_seed(seed)
    ex = DistillationExperts(d_s, d_t, e).double()
    s = torch.randn(b, d_s, dtype=torch.float64, requires_grad=True)
    t = torch.randn(b, d_t, dtype=torch.float64)
    g = gumbel_noise((b, e), generator=torch.Generator().manual_seed(seed + 1),
                     dtype=torch.float64)
    loss = de_loss(s, t, ex.w1, ex.b1, ex.w2, ex.b2, ex.selection(t), tau, gumbel=g, path=path)
    loss.backward()
    alpha = torch.softmax((torch.log_softmax(ex.selection(t), -1) + g) / tau, -1)
    grads = {"s": s.grad, **{n: p.grad for n, p in ex.named_parameters()}}
    return loss.detach(), grads, alpha.detach()


@pytest.mark.parametrize("tau", [1e-10, 1e-3])
def test_selected_experts_path_equals_all_experts_path(tau, monkeypatch):
    dense_loss, dense, alpha = _de_grads("dense", tau)
    nonzero = int((alpha != 0).sum())
    if tau == 1e-10:  # exactly one-hot in floating point
        assert bool(((alpha == 0) | (alpha == 1)).all()) and nonzero == alpha.shape[0]
    else:  # a few entities keep two experts
        assert alpha.shape[0] < nonzero <= alpha.numel() * SPARSE_MAX_FRACTION
    # "auto" takes the selected-experts path here (the dense one is not called)
    from recsys.losses import de as de_module

    def no_dense(*args, **kwargs):
        raise AssertionError("dense path taken")

    monkeypatch.setattr(de_module, "_dense_mixture", no_dense)
    for path in ("auto", "sparse"):
        loss, grads, _ = _de_grads(path, tau)
        torch.testing.assert_close(loss, dense_loss, rtol=1e-12, atol=0)
        for name, g in grads.items():
            assert g is not None, name  # every parameter gets a gradient, as in the dense path
            torch.testing.assert_close(g, dense[name], rtol=1e-12, atol=1e-14 * float(
                dense[name].abs().max()), msg=name)
        if tau == 1e-10:
            # through a one-hot softmax the selection net's gradient is exactly 0 in both paths
            # (a zero tensor, not None: Adam's moments and weight decay see the same step)
            for name in ("selection.weight", "selection.bias"):
                assert torch.equal(grads[name], torch.zeros_like(grads[name]))
                assert torch.equal(grads[name], dense[name])
            # the loss value is the selected expert's, exactly
            assert torch.equal(loss, dense_loss)


def test_selected_experts_path_unused_experts_get_zero_gradients():
    _, grads, alpha = _de_grads("sparse", 1e-10, b=3, e=8)
    used = alpha.argmax(-1).unique()
    unused = torch.tensor([k for k in range(8) if k not in used.tolist()])
    assert unused.numel() >= 5
    for name in ("w1", "b1", "w2", "b2"):
        assert torch.equal(grads[name][unused], torch.zeros_like(grads[name][unused]))
        assert bool((grads[name][used] != 0).any())


def test_mixture_paths_agree_on_a_dense_selection():
    torch.manual_seed(5)
    ex = DistillationExperts(4, 7, 5).double()
    s = torch.randn(6, 4, dtype=torch.float64)
    alpha = torch.softmax(torch.randn(6, 5, dtype=torch.float64), -1)
    ref = (torch.stack([torch.relu(s @ ex.w1[k] + ex.b1[k]) @ ex.w2[k] + ex.b2[k]
                        for k in range(5)], 1) * alpha.unsqueeze(-1)).sum(1)
    for path in ("dense", "sparse", "auto"):
        torch.testing.assert_close(experts_mixture(s, alpha, ex.w1, ex.b1, ex.w2, ex.b2,
                                                   path=path), ref, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="expert path"):
        experts_mixture(s, alpha, ex.w1, ex.b1, ex.w2, ex.b2, path="fast")


def test_htd_one_hot_assignment_term_matches_dense():
    def run(path):
        torch.manual_seed(2)
        m = HTD(3, 6, num_experts=4, alpha=0.0, expert_path=path).double()
        m.set_epoch(1000, 1000)  # tau = t_end: one-hot
        su = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
        tu, ti = torch.randn(5, 6, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
        si = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
        loss = m(su, tu, si, ti, num_interactions=20)
        loss.backward()
        return loss.detach(), [su.grad, si.grad] + [p.grad for p in m.parameters()]

    dense_loss, dense = run("dense")
    loss, grads = run("auto")
    torch.testing.assert_close(loss, dense_loss, rtol=1e-12, atol=0)
    for g, ref in zip(grads, dense):
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-14 * float(ref.abs().max()))
