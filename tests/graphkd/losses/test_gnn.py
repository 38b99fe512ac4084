"""HKD and MHGD against independent dense implementations written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from graphkd.graphs import EdgeSet
from graphkd.losses import get_loss
from graphkd.losses.gnn import HKD, MHGD, TAGConv1, hkd_loss, mhgd_kl, tag_propagate


# --------------------------------------------------------------------------- TAGConv
def _dense_adj(edges: EdgeSet) -> torch.Tensor:
    a = torch.zeros(edges.num_rows, edges.num_cols, dtype=torch.float64)
    a[edges.row, edges.col] = 1.0
    return a


def test_tag_propagate_matches_the_dense_normalised_adjacency(device):
    # irregular graph with an isolated node (4) and a node of in-degree 3 (0)
    ei = torch.tensor([[1, 2, 3, 0, 0, 2], [0, 0, 0, 1, 2, 3]])
    edges = EdgeSet.from_edge_index(ei, num_nodes=5)
    x = torch.randn(5, 3, dtype=torch.float64)
    a = _dense_adj(edges)  # a[v, u] = 1 when v aggregates u
    deg = a.sum(1).clamp_min(1)
    ref = deg.rsqrt()[:, None] * a * deg.rsqrt()[None, :] @ x
    out = tag_propagate(x.to(device), edges.to(device)).cpu()
    torch.testing.assert_close(out, ref)
    assert torch.equal(out[4], torch.zeros(3, dtype=torch.float64))


def test_tagconv1_equals_pyg_tagconv():
    from torch_geometric.nn import TAGConv

    # every node has an in-edge (PyG gives a source without in-edges weight 0, DGL clamps its
    # degree at 1 as we do; kNN graphs, HKD's use, have in-degree k everywhere)
    ei = torch.tensor([[1, 2, 3, 0, 0, 2, 4, 1], [0, 0, 0, 1, 2, 3, 3, 4]])
    x = torch.randn(5, 4)
    ours = TAGConv1(4, 6)
    ref = TAGConv(4, 6, K=1)
    with torch.no_grad():
        ref.lins[0].weight.copy_(ours.linear.weight[:, :4])
        ref.lins[1].weight.copy_(ours.linear.weight[:, 4:])
        ref.bias.copy_(ours.linear.bias)
    torch.testing.assert_close(ours(x, EdgeSet.from_edge_index(ei, 5)), ref(x, ei))


# --------------------------------------------------------------------------- HKD
def _nce(a, b, tau):
    logits = a @ b.T / tau
    return -torch.log_softmax(logits, 1).diagonal().mean()


def _ref_hkd(mod: HKD, f_s, f_t, symmetric=True):
    tau, k = mod.tau, mod.k

    def emb(lin, f):
        return F.normalize(f @ lin.weight.T + lin.bias, dim=1)

    e_s, e_t = emb(mod.embed_s.linear, f_s), emb(mod.embed_t.linear, f_t)

    def nce(a, b):
        return _nce(a, b, tau) + (_nce(b, a, tau) if symmetric else 0.0)

    loss = nce(e_s, e_t)
    b = f_s.shape[0]
    if b < k:
        return loss, None
    ft = F.normalize(f_t, dim=1)
    dist = 1 - ft @ ft.T  # cosine distance, self included (the reference sets it to -1)
    dist.fill_diagonal_(-1.0)
    nbr = dist.topk(k, dim=1, largest=False).indices
    a = torch.zeros(b, b, dtype=f_s.dtype)
    a.scatter_(1, nbr, 1.0)
    deg = a.sum(1)
    a_hat = deg.rsqrt()[:, None] * a * deg.rsqrt()[None, :]

    def agg(lin, e):
        return F.normalize(torch.cat([e, a_hat @ e], 1) @ lin.weight.T + lin.bias, dim=1)

    return loss + nce(agg(mod.gnn_s.linear, e_s), agg(mod.gnn_t.linear, e_t)), nbr


@pytest.mark.parametrize("symmetric", [True, False])
def test_hkd_matches_dense_reference(symmetric, device):
    torch.manual_seed(3)
    mod = get_loss("hkd", student_dim=6, teacher_dim=10, feat_dim=8, k=4,
                   symmetric=symmetric).double()
    f_s, f_t = torch.randn(12, 6, dtype=torch.float64), torch.randn(12, 10, dtype=torch.float64)
    ref, nbr = _ref_hkd(mod, f_s, f_t, symmetric)
    mod = mod.to(device)
    edges = mod.instance_graph(f_t.to(device))
    assert edges.degree == 4
    assert torch.equal(edges.col.view(12, 4).sort(1).values.cpu(), nbr.sort(1).values)
    torch.testing.assert_close(mod(f_s.to(device), f_t.to(device)).cpu(), ref)


def test_hkd_small_batch_skips_the_graph_term():
    mod = HKD(student_dim=3, teacher_dim=5, feat_dim=4, k=8).double()
    f_s, f_t = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    ref, nbr = _ref_hkd(mod, f_s, f_t)
    assert nbr is None and mod.instance_graph(f_t) is None
    torch.testing.assert_close(mod(f_s, f_t), ref)


def test_hkd_gradients_and_teacher_side():
    mod = HKD(student_dim=2, teacher_dim=4, feat_dim=3, k=2).double()
    f_s = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: mod(s, f_t), (f_s,), fast_mode=True)
    e_s, e_t = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1), F.normalize(
        torch.randn(5, 4, dtype=torch.float64), dim=1)
    torch.testing.assert_close(hkd_loss(e_s, e_t, tau=0.5, symmetric=False), _nce(e_s, e_t, 0.5))


def test_hkd_errors():
    with pytest.raises(ValueError, match="student_dim= and teacher_dim="):
        get_loss("hkd")
    with pytest.raises(ValueError, match="unknown metric"):
        HKD(3, 4, metric="manhattan")
    with pytest.raises(ValueError, match="same B"):
        HKD(3, 4)(torch.randn(5, 3), torch.randn(6, 4))


# --------------------------------------------------------------------------- MHGD
def _bn(x, bn, train):
    if train:
        mean, var = x.mean(0), x.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def _ref_graph(head, k, q, train):
    s = _bn(k @ head.sender.weight.T + head.sender.bias, head.sender_bn, train)
    r = _bn(q @ head.receiver.weight.T + head.receiver.bias, head.receiver_bn, train)
    d = head.head_dim
    return torch.stack([s[:, h * d:(h + 1) * d] @ r[:, h * d:(h + 1) * d].T
                        for h in range(head.num_heads)])


def _ref_stage1(mod: MHGD, f_t):
    v = [F.normalize(f, dim=1) for f in f_t]
    total = 0.0
    for i in range(1, len(v)):
        head, est = mod.heads[i - 1], mod.estimators[i - 1]
        g = _ref_graph(head, v[i], v[i - 1], train=True)
        x = F.relu(_bn(v[i - 1] @ est.fc0.weight.T + est.fc0.bias, est.bn0, True))
        cat = torch.cat([torch.softmax(g[h], 1) @ x for h in range(g.shape[0])], dim=1)
        pred = F.normalize(cat @ est.fc1.weight.T + est.fc1.bias, dim=1)
        total = total + (1 - (pred * v[i]).sum(1)).mean()
    return total


def _ref_stage2(mod: MHGD, f_s, f_t, reduction="mean"):
    v_t = [F.normalize(f, dim=1) for f in f_t]
    v_s = [F.normalize(a(f), dim=1) for a, f in zip(mod.adapters, f_s)]
    total = 0.0
    for i in range(1, len(v_t)):
        head = mod.heads[i - 1]
        p_s = torch.softmax(torch.tanh(_ref_graph(head, v_s[i], v_s[i - 1], False)), -1)
        p_t = torch.softmax(torch.tanh(_ref_graph(head, v_t[i], v_t[i - 1], False)), -1)
        kl = (p_s * (p_s.log() - p_t.log())).sum(-1)  # [H, B]
        total = total + (kl.mean() if reduction == "mean" else kl.sum())
    return total


def _mhgd_inputs(b=10):
    g = torch.Generator().manual_seed(0)
    f_t = tuple(torch.randn(b, d, generator=g, dtype=torch.float64) for d in (12, 8, 10))
    f_s = tuple(torch.randn(b, d, generator=g, dtype=torch.float64) for d in (6, 8, 4))
    return f_s, f_t


def test_mhgd_two_stages_match_dense_reference(device):
    torch.manual_seed(0)
    mod = get_loss("mhgd", student_dim=(6, 8, 4), teacher_dim=(12, 8, 10), num_heads=3,
                   drop_head=False).double().to(device)
    f_s, f_t = _mhgd_inputs()
    f_s, f_t = tuple(f.to(device) for f in f_s), tuple(f.to(device) for f in f_t)
    assert isinstance(mod.adapters[1], torch.nn.Identity)  # equal widths: no adapter
    assert mod.heads[0].head_dim == 10 and mod.heads[1].head_dim == 9
    with pytest.raises(RuntimeError, match="run stage 1 first"):
        mod(f_s, f_t)
    mod.train()
    ref1 = _ref_stage1(mod, f_t)
    torch.testing.assert_close(mod.pretrain_loss(f_t), ref1)  # also updates BN running stats
    mod.finish_pretraining()
    mod.train()  # heads stay in eval mode once pre-trained
    assert not mod.heads.training and mod.adapters.training
    out = mod(f_s, f_t)
    torch.testing.assert_close(out, _ref_stage2(mod, f_s, f_t))
    mod_sum = MHGD((6, 8, 4), (12, 8, 10), num_heads=3, reduction="sum").double().to(device)
    mod_sum.load_state_dict(mod.state_dict())
    torch.testing.assert_close(mod_sum(f_s, f_t), _ref_stage2(mod, f_s, f_t, "sum"))
    # stage 2 trains the student side only: no gradient reaches the frozen heads
    out.backward()
    assert all(p.grad is None for p in mod.pretrain_parameters())
    assert mod.adapters[0].weight.grad is not None


def test_mhgd_kl_is_zero_for_equal_graphs_and_positive_otherwise():
    g = torch.randn(2, 5, 5)
    assert mhgd_kl(g, g) == 0
    assert mhgd_kl(g, torch.randn(2, 5, 5)) > 0


def test_mhgd_state_dict_restores_the_stage():
    mod = MHGD((4, 4), (6, 6), num_heads=2)
    f_t = (torch.randn(8, 6), torch.randn(8, 6))
    mod.pretrain_loss(f_t)
    mod.finish_pretraining()
    fresh = MHGD((4, 4), (6, 6), num_heads=2)
    assert not fresh.pretrained
    fresh.load_state_dict(mod.state_dict())
    assert fresh.pretrained and not any(p.requires_grad for p in fresh.pretrain_parameters())
    f_s = (torch.randn(8, 4), torch.randn(8, 4))
    mod.eval()
    fresh.eval()
    assert torch.equal(mod(f_s, f_t), fresh(f_s, f_t))


def test_mhgd_head_mask_drops_some_heads():
    mod = MHGD((4, 4), (6, 6), num_heads=8)
    mask = mod.head_mask(50, torch.device("cpu"))
    assert mask.shape == (8, 50, 1) and set(mask.unique().tolist()) <= {0.0, 1.0}
    kept = mask.sum(0)
    assert bool((kept >= 1).all()) and bool((kept <= 7).all())
    torch.manual_seed(0)
    mod.pretrain_loss((torch.randn(16, 6), torch.randn(16, 6)))  # runs with dropped heads


def test_mhgd_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"consecutive layers.*tuples of paths"):
        get_loss("mhgd", student_dim=8, teacher_dim=8)
    with pytest.raises(ValueError, match="2 student layers but 3 teacher"):
        MHGD((4, 4), (4, 4, 4))
    mod = MHGD((4, 4), (6, 6), num_heads=2)
    with pytest.raises(ValueError, match="tuple of 2"):
        mod.pretrain_loss(torch.randn(8, 6))
