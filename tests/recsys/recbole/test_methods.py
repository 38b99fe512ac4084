"""Method adapters: the registry and its YAML defaults, and each adapter's loss against an
independent computation on a real RecBole batch (40-user slice of ml-100k, BPR student)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from recsys.recbole import METHODS, available_methods, build_config
from recsys.recbole.runner import method_yaml

from .conftest import distill_setup

SMALL = {
    "rd": {"k": 5, "dynamic_start_epoch": 0, "num_dynamic_samples": 20},
    "cd": {"sample_num": 50, "n_distill": 3},
    "rrd": {"k": 6, "l": 5, "m": 30},
    "dcd": {"k": 5, "m": 30, "item_k": 4, "item_m": 15},
    "unkd": {"num_groups": 2, "n_distill": 3, "m": 20},
    "de": {"num_experts": 3, "max_entities": None},
    "ftd": {"max_entities": None},
    "htd": {"num_experts": 3, "max_entities": None},
}


@pytest.fixture(scope="module")
def setups(base_config, teacher_file, run_dir):
    """One prepared (soft labels computed) model per method, built on first use."""
    cache = {}

    def get(method, **params):
        key = (method, repr(sorted(params.items())))
        if key not in cache:
            cfg, data, model, trainer = distill_setup(
                method, base_config, teacher_file, run_dir,
                distill_params={**SMALL.get(method, {}), **params})
            model.prepare()
            model.on_epoch_start(0)
            batch = next(iter(data[0]))
            cache[key] = (cfg, model, batch)
        return cache[key]

    return get


def _emb(model):
    return model.user_embedding.weight, model.item_embedding.weight


def _pair(model, users, items):
    u, i = _emb(model)
    return (u[users][:, None, :] * i[items]).sum(-1)


def _history_sets(model):
    h = model.ctx.history
    return [set(h.col[h.ptr[u]:h.ptr[u + 1]].tolist()) for u in range(h.num_rows)]


def _relaxed_pl(lists, negatives):
    """Independent relaxed Plackett-Luce: sum_k [log(sum_{l>=k} e^s_l + sum_j e^n_j) - s_k]."""
    out = []
    for s, n in zip(lists, negatives):
        total = 0.0
        for k in range(len(s)):
            total += torch.logsumexp(torch.cat([s[k:], n]), 0) - s[k]
        out.append(total)
    return torch.stack(out).mean()


# ----------------------------------------------------------------------------- registry
def test_every_method_has_yaml_defaults_it_accepts():
    assert set(available_methods()) == {"none", "rd", "cd", "rrd", "dcd", "unkd", "de",
                                        "de_rrd", "ftd", "htd", "aekd", "adkd"}
    for name in available_methods():
        shipped = yaml.safe_load(method_yaml(name).read_text())
        assert "distill_weight" in shipped
        params = shipped.get("distill_params") or {}
        assert set(params) <= set(METHODS[name].defaults), name


def test_config_merge_order(base_config, tmp_path):
    cfg = build_config("BPR", "tiny", method="rrd", config_dict=base_config)
    assert cfg["distill_weight"] == 0.001 and cfg["distill_params"]["m"] == 500
    user_file = tmp_path / "user.yaml"
    user_file.write_text("distill_weight: 0.2\ndistill_params: {k: 7}\nstudent: NeuMF\n")
    cfg = build_config("BPR", "tiny", method="rrd", config_file_list=[str(user_file)],
                       config_dict=base_config)
    assert cfg["distill_weight"] == 0.2 and cfg["student"] == "NeuMF"
    # distill_params merge key by key over the method's YAML
    assert cfg["distill_params"] == {"k": 7, "l": 40, "m": 500, "temperature": 10.0,
                                     "reduction": "per_interaction"}
    cfg = build_config("BPR", "tiny", method="rrd", config_file_list=[str(user_file)],
                       config_dict={**base_config, "distill_weight": 0.5})
    assert cfg["distill_weight"] == 0.5  # config_dict beats files
    # nested parts (de_rrd: {de: {...}, rrd: {...}}) merge key by key too
    shipped = build_config("BPR", "tiny", method="de_rrd", config_dict=base_config)
    cfg = build_config("BPR", "tiny", method="de_rrd", config_dict={
        **base_config, "distill_params": {"de": {"anneal_epochs": 1}}})
    assert cfg["distill_params"]["de"] == {**shipped["distill_params"]["de"], "anneal_epochs": 1}
    assert cfg["distill_params"]["rrd"] == shipped["distill_params"]["rrd"]


# ----------------------------------------------------------------------------- values
def test_calculate_loss_is_student_loss_plus_weighted_distill(setups):
    cfg, model, batch = setups("rrd")
    own, distill = model.calculate_loss(batch)
    assert torch.equal(own, model.student.calculate_loss(batch))
    torch.testing.assert_close(distill, cfg["distill_weight"] * model.distill(batch))


def test_rrd_samples_and_value(setups):
    cfg, model, batch = setups("rrd")
    ad = model.distill
    top = model.ctx.soft_labels
    interesting, boring = ad.tables
    hist = _history_sets(model)
    users = torch.unique(batch["user_id"])
    for u in users.tolist():
        t = top.indices[u].tolist()
        ranks = [t.index(i) for i in interesting[u].tolist()]
        assert ranks == sorted(ranks)  # teacher order
        assert set(boring[u].tolist()).isdisjoint(set(t) | hist[u] | {0})
    value = ad(batch)
    # per_interaction (default): the sum over the batch's users / its interaction count
    expected = _relaxed_pl(_pair(model.student, users, interesting[users]),
                           _pair(model.student, users, boring[users]))
    expected = expected * users.numel() / batch["user_id"].numel()
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    # resampled each epoch, reproducibly
    first = interesting.clone()
    ad.on_epoch_start(1)
    assert not torch.equal(ad.tables[0], first)


def test_soft_labels_are_teacher_topk_without_history(setups):
    cfg, model, batch = setups("rrd")
    top = model.ctx.soft_labels
    hist = _history_sets(model)
    t_u, t_i = _emb(model.teacher)
    for u in (1, 5, 17):
        scores = (t_u[u] @ t_i.T).clone()
        scores[0] = -math.inf
        scores[list(hist[u])] = -math.inf
        expected = torch.sort(scores, descending=True, stable=True).indices[:top.k]
        assert top.indices[u].tolist() == expected.tolist()


def test_rd_value(setups):
    cfg, model, batch = setups("rd")
    ad = model.distill
    users = torch.unique(batch["user_id"])
    items = model.ctx.soft_labels.indices[users, :5]
    s = _pair(model.student, users, items)
    sampled = _pair(model.student, users, ad.sampled[users])
    # hybrid weights from dynamic_start_epoch=0 (cf variant): position x discrepancy, L1-normed
    n = model.n_items
    frac = (sampled[:, None, :] > s[:, :, None]).float().mean(-1)
    rank = torch.floor((n - 1) * frac) + 1
    w_pos = torch.softmax(-torch.arange(1, 6, dtype=torch.float) / 1.0, 0)
    w_dis = torch.tanh(0.1 * (rank - torch.arange(5.0))).clamp_min(0)
    w = w_pos * w_dis
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    expected = (w * -F.logsigmoid(s)).sum(1).mean()
    torch.testing.assert_close(ad(batch), expected, rtol=1e-4, atol=1e-5)


def test_cd_value(setups):
    cfg, model, batch = setups("cd")
    items, teacher = model.distill.tables
    users = torch.unique(batch["user_id"])
    s = _pair(model.student, users, items[users])
    t = _pair(model.teacher, users, items[users])  # independent of the soft labels
    torch.testing.assert_close(teacher[users], t, rtol=1e-5, atol=1e-5)
    target = torch.sigmoid(t / 2.0)
    expected = F.binary_cross_entropy_with_logits(s, target, reduction="none").sum(1).mean()
    torch.testing.assert_close(model.distill(batch), expected, rtol=1e-5, atol=1e-5)


def test_dcd_value(setups):
    """User side + item side (the item side was missing before: issue 13 item 3)."""
    cfg, model, batch = setups("dcd")
    under, over = model.distill.tables
    users = torch.unique(batch["user_id"])
    top = model.ctx.soft_labels.indices
    for u in users.tolist()[:5]:
        assert set(under[u].tolist()) <= set(top[u].tolist())
    b = batch["user_id"].numel()  # reduction "per_interaction": sums over rows / b
    user_part = _relaxed_pl(_pair(model.student, users, under[users]),
                            _pair(model.student, users, over[users])) * users.numel() / b
    # item side: each batch item's sampled users, outside the item's training users
    i_under, i_over, v_under, v_over = model.distill.item_tables
    items = torch.unique(batch["item_id"])
    hist = _history_sets(model)
    t_u, t_i = _emb(model.teacher)
    s_u, s_i = _emb(model.student)
    parts = []
    for i in items.tolist():
        trained = {u for u in range(len(hist)) if i in hist[u]}
        chosen = i_under[i][v_under[i]].tolist()
        assert set(chosen).isdisjoint(trained | {0})
        t = (t_u[chosen] @ t_i[i]).tolist()
        assert t == sorted(t, reverse=True)  # teacher order
        s = s_u[i_under[i]] @ s_i[i]
        n = s_u[i_over[i]] @ s_i[i]
        if v_under[i].any():
            parts.append(_relaxed_pl([s[v_under[i]]], [n[v_over[i]]]))
    item_part = torch.stack(parts).sum() / b
    torch.testing.assert_close(model.distill(batch), user_part + item_part,
                               rtol=1e-5, atol=1e-5)


def test_unkd_pairs_and_value(setups):
    cfg, model, batch = setups("unkd")
    items_i, items_j, valid = model.distill.tables
    pop = model.ctx.item_popularity
    order = torch.sort(-pop, stable=True).indices
    mass = torch.cumsum(pop[order], 0) - pop[order]
    group = torch.empty_like(order)
    group[order] = torch.floor(mass * 2 / pop.sum()).long().clamp_max(1)
    hist = _history_sets(model)
    t_u, t_i = _emb(model.teacher)
    users = torch.unique(batch["user_id"])
    for u in users.tolist()[:8]:
        for a, b, ok in zip(items_i[u].tolist(), items_j[u].tolist(), valid[u].tolist()):
            if ok:
                assert group[a] == group[b] and a != b
                assert a not in hist[u] and b not in hist[u]
                assert float(t_u[u] @ t_i[a]) >= float(t_u[u] @ t_i[b])
    s_i = _pair(model.student, users, items_i[users])
    s_j = _pair(model.student, users, items_j[users])
    v = valid[users].float()
    per_user = (-F.logsigmoid(s_i - s_j) * v).sum(1) / v.sum(1).clamp_min(1)
    # mean over the batch's interactions (issue 13 item 4; was: over unique users)
    n_u = torch.stack([(batch["user_id"] == u).sum() for u in users]).float()
    expected = (n_u * per_user).sum() / batch["user_id"].numel()
    torch.testing.assert_close(model.distill(batch), expected, rtol=1e-5, atol=1e-5)


def test_ftd_value(setups):
    cfg, model, batch = setups("ftd")
    users = torch.unique(batch["user_id"])
    items = torch.unique(torch.cat([batch["item_id"], batch["neg_item_id"]]))
    su, si = _emb(model.student)
    tu, ti = _emb(model.teacher)
    s = F.normalize(torch.cat([su[users], si[items]]), dim=1)
    t = F.normalize(torch.cat([tu[users], ti[items]]), dim=1)
    expected = ((t @ t.T - s @ s.T) ** 2).mean()
    torch.testing.assert_close(model.distill(batch), expected, rtol=1e-4, atol=1e-6)


def test_de_value_and_annealing(setups):
    from recsys.losses import DE

    cfg, model, batch = setups("de")
    ad = model.distill
    users = torch.unique(batch["user_id"])
    pos, neg = torch.unique(batch["item_id"]), torch.unique(batch["neg_item_id"])
    su, si = _emb(model.student)
    tu, ti = _emb(model.teacher)
    torch.manual_seed(3)
    value = ad(batch)
    torch.manual_seed(3)
    expected = ad.loss(su[users], tu[users], si[pos], ti[pos], si[neg], ti[neg],
                       num_interactions=batch["user_id"].numel())
    assert isinstance(ad.loss, DE)
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    # annealed over the reference's max_epoch=1000, not the configured epochs
    ad.on_epoch_start(1)
    assert ad.loss.users.tau == pytest.approx(1.0 * (1e-10 / 1.0) ** (1 / 1000))
    # the experts are trainable parts of the model (saved with the student, optimised)
    assert any(k.startswith("distill.loss.users") for k in model.state_dict())


def test_max_entities_caps_batch_entities(setups):
    cfg, model, batch = setups("ftd", max_entities=7)
    users, pos, neg = model.distill.entities(batch)
    assert users.numel() == pos.numel() == neg.numel() == 7
    assert set(users.tolist()) <= set(batch["user_id"].tolist())


def test_de_rrd_is_weighted_sum(setups):
    cfg, model, batch = setups("de_rrd", de={"weight": 0.3, **SMALL["de"]},
                               rrd={"weight": 0.7, **SMALL["rrd"]})
    parts = model.distill.methods
    torch.manual_seed(5)
    value = model.distill(batch)
    torch.manual_seed(5)
    expected = 0.3 * parts["de"](batch) + 0.7 * parts["rrd"](batch)
    torch.testing.assert_close(value, expected, rtol=0, atol=0)


@pytest.mark.parametrize("k", [5, 40])
def test_list_scores_match_predict(setups, k, monkeypatch):
    from recsys.recbole import context
    from recsys.recbole.context import list_scores, pair_scores

    cfg, model, batch = setups("rrd")
    users = torch.unique(batch["user_id"])
    items = torch.randint(1, model.n_items, (users.numel(), k),
                          generator=torch.Generator().manual_seed(k))
    for student in (model.student, model.teacher):
        ref = pair_scores(student, "user_id", "item_id", users, items)
        torch.testing.assert_close(list_scores(student, "user_id", "item_id", users, items), ref,
                                   rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(context, "DENSE_SCORE_BUDGET", 0)  # force the gather path
        torch.testing.assert_close(list_scores(student, "user_id", "item_id", users, items), ref,
                                   rtol=1e-5, atol=1e-5)
        monkeypatch.undo()


def test_htd_matches_library_module_with_sum_and_averages_with_mean(setups):
    cfg, model, batch = setups("htd", reduction="sum")
    ad = model.distill
    users = torch.unique(batch["user_id"])
    items = torch.unique(torch.cat([batch["item_id"], batch["neg_item_id"]]))
    su, si = _emb(model.student)
    tu, ti = _emb(model.teacher)
    torch.manual_seed(2)
    value = ad(batch)
    torch.manual_seed(2)
    expected = ad.loss(su[users], tu[users], si[items], ti[items])  # recsys.losses.HTD.forward
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    # with reduction="mean" the group-assignment term is a mean over entities (as DE's)
    cfg, model, batch = setups("htd", reduction="mean", alpha=0.0)
    h = model.distill.loss
    su, si = _emb(model.student)
    tu, ti = _emb(model.teacher)
    torch.manual_seed(2)
    value = model.distill(batch)
    torch.manual_seed(2)
    ga = h.users(su[users], tu[users], reduction="mean") + h.items(si[items], ti[items],
                                                                   reduction="mean")
    torch.testing.assert_close(value, ga, rtol=1e-6, atol=1e-6)
