"""ADER's continual loop with RecBole's SASRec on a 40-user slice of ml-100k."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.losses import ader_weight
from recsys.recbole.ader import (
    CONTINUAL_VARIANTS,
    evaluate_rows,
    exemplar_counts,
    herding,
    prepare_continual,
    results_markdown,
    run_continual,
    select_exemplars,
)

TINY_SASREC = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1}


@pytest.fixture(scope="module")
def data(data_root):
    return prepare_continual("tiny", n_periods=5, max_len=10,
                             config_dict={"data_path": str(data_root)})


@pytest.fixture(scope="module")
def sasrec(data):
    from recsys.recbole.zoo import build_recbole_model

    torch.manual_seed(0)
    return build_recbole_model("SASRec", data.config, data.dataset,
                               {**TINY_SASREC, "loss_type": "CE"})


def test_periods_partition_the_rows_in_time(data):
    assert data.n_periods == 5
    assert sum(data.stats["block_rows"]) == len(data.rows) == int(data.block.numel())
    inter = data.stats["interactions"]
    assert len(data.rows) == inter - int(data.dataset.inter_feat["user_id"].nunique())
    known = data.known.sum(1).tolist()
    assert known == sorted(known) and known[-1] <= data.stats["n_items"]
    # a row's history and target are items known by its period
    for t in range(5):
        rows = data.block_rows(t)
        assert bool(data.known[t][rows.target].all())
        assert bool(data.known[t][rows.seq[rows.seq > 0]].all())


def test_evaluate_rows_matches_recbole_full_sort(data, sasrec):
    """Recall@20 / MRR@20 against SASRec's own full_sort_predict and a top-k position."""
    rows, known = data.block_rows(2), data.known[1]
    got = evaluate_rows(sasrec, rows, known)
    keep = known[rows.target].nonzero().squeeze(1)
    part = rows.take(keep)
    sasrec.eval()
    with torch.no_grad():
        scores = sasrec.full_sort_predict(part.interaction(sasrec, "cpu"))
    scores = scores.masked_fill(~known, -math.inf)
    top = torch.topk(scores, 20, dim=1).indices
    hit = top == part.target.unsqueeze(1)
    recall = float(hit.any(1).double().mean())
    pos = hit.double().argmax(1)
    mrr = float(torch.where(hit.any(1), 1.0 / (pos + 1), 0.0).mean())
    assert got["n_test"] == len(part) > 0
    assert got["recall@20"] == pytest.approx(recall, abs=1e-9)
    assert got["mrr@20"] == pytest.approx(mrr, abs=1e-9)


def test_select_exemplars_is_herding_per_item(data, sasrec):
    pool, known = data.block_rows(0), data.known[0]
    ex = select_exemplars(sasrec, pool, known, budget=60,
                          generator=torch.Generator().manual_seed(3))
    counts = exemplar_counts(pool.target, known.numel(), 60, torch.Generator().manual_seed(3))
    assert len(ex) == int(counts.sum()) <= 60
    assert torch.bincount(ex.rows.target, minlength=known.numel()).tolist() == counts.tolist()
    sasrec.eval()
    with torch.no_grad():
        hidden = sasrec.forward(pool.seq, pool.length)
        logits = hidden @ sasrec.item_embedding.weight.T
    item = int(counts.argmax())
    rows = (pool.target == item).nonzero().squeeze(1)
    expect = rows[herding(hidden[rows], int(counts[item]))]
    got = ex.rows.target == item
    assert torch.equal(ex.rows.seq[got], pool.seq[expect])
    assert torch.allclose(ex.logits[got], logits[expect], atol=1e-5)
    assert torch.equal(ex.known, known)


def test_ader_loop_weights_and_shared_first_period(data):
    cache: dict = {}
    kw = {"epochs": 1, "seed": 0, "model_config": TINY_SASREC, "batch_size": 128,
          "first_period": cache}
    ader = run_continual(data, "ader", budget=80, lambda_base=0.8, **kw)
    fine = run_continual(data, "finetune", **kw)
    assert [p["test_period"] for p in ader["periods"]] == [1, 2, 3, 4]
    assert 0 in cache and fine["periods"][0]["reused_first_period"]
    for key in ("recall@20", "mrr@20"):  # period 0 is the same model for every variant
        assert fine["periods"][0][key] == ader["periods"][0][key]
    p1 = ader["periods"][1]
    assert 0 < p1["n_exemplars"] <= 80 and p1["n_train"] == len(data.block_rows(1))
    assert p1["lambda"] == pytest.approx(ader_weight(
        0.8, p1["n_exemplars"], p1["n_train"], int(data.known[0].sum()),
        int(data.known[1].sum())))
    assert all(p["n_exemplars"] == 0 and p["lambda"] == 0.0 for p in fine["periods"])
    for r in (ader, fine):
        assert all(0.0 <= p["recall@20"] <= 1.0 and p["mrr@20"] <= p["recall@20"]
                   for p in r["periods"])
    table = results_markdown([ader, fine])
    assert "| ader | 1 |" in table and "| finetune | 1 |" in table


def test_retrain_uses_every_block_so_far(data):
    res = run_continual(data, "retrain", epochs=1, seed=1, model_config=TINY_SASREC,
                        batch_size=256)
    sizes = data.stats["block_rows"]
    assert [p["n_train"] for p in res["periods"]] == [sum(sizes[:t + 1]) for t in range(4)]
    assert sorted(CONTINUAL_VARIANTS) == ["ader", "finetune", "retrain"]
    with pytest.raises(ValueError, match="unknown continual-learning variant"):
        run_continual(data, "nope")


def test_cli_ader_prints_the_table_and_writes_json(data_root, tmp_path, capsys):
    import json

    from recsys.cli import main

    out = tmp_path / "ader.json"
    rc = main(["ader", "--dataset", "tiny", "--data-path", str(data_root), "--periods", "3",
               "--epochs", "1", "--variants", "finetune", "--max-len", "10",
               "--model-config", json.dumps(TINY_SASREC), "--out", str(out), "-q"])
    assert rc == 0
    table = capsys.readouterr().out
    runs = json.loads(out.read_text())
    assert [r["variant"] for r in runs] == ["finetune"] and len(runs[0]["periods"]) == 2
    r = runs[0]["periods"][1]["recall@20"]
    assert table.startswith("| variant |") and f"{r:.4f}" in table


def test_cli_ader_unknown_variant_is_one_line(capsys):
    from recsys.cli import main

    assert main(["methods", "--kind", "continual"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert names == ["ader", "finetune", "retrain"]
    assert main(["ader", "--variants", "ader,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown continual-learning variant 'nope'" in err and "finetune" in err
