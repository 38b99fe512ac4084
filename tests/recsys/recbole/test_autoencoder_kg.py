"""Autoencoder teachers/students with ``aekd`` (Pan 2019) and knowledge-aware teachers with
``adkd`` (Chen 2018) on real RecBole models, data loaders and trainers (tiny ml-100k slices)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recsys.losses import aekd_loss, discriminator_loss, generator_loss, plackett_luce_log_prob
from recsys.recbole import (
    build_config,
    distill_model_class,
    ensure_teacher,
    load_model,
    prepare_data,
    run_distillation,
)
from recsys.recbole.autoencoder import AUTOENCODERS, prepare_user_data
from recsys.recbole.kg import KG_LOAD_COL, ensure_kg_dataset, export_kg_teacher
from recsys.recbole.runner import STUDENT_PATHS

AE_STUDENT = {"mlp_hidden_size": [32], "latent_dimension": 16}


def _setup(method, base_config, teacher_file, run_dir, student, student_config, dataset="tiny",
           prepare=prepare_data, **extra):
    from recbole.utils import init_seed

    cls = distill_model_class(student)
    cfg = build_config(cls, dataset, method=method, config_dict={
        **base_config, "student": student, "student_config": student_config,
        "teacher_checkpoint": str(teacher_file),
        "softlabel_cache_dir": str(run_dir / "softlabels"), **extra})
    data = prepare(cfg)
    init_seed(cfg["seed"], cfg["reproducibility"])
    model = cls(cfg, data[0].dataset)
    model.prepare()
    return cfg, data, model


@pytest.fixture(scope="module")
def vae_teacher(base_config, run_dir) -> Path:
    path, _ = ensure_teacher("MultiVAE", "tiny", teacher_config={"mlp_hidden_size": [32]},
                             config_dict={**base_config, "epochs": 1}, run_dir=run_dir)
    return path


def test_autoencoder_table_matches_runner_paths():
    assert set(STUDENT_PATHS) == set(AUTOENCODERS)


def test_aekd_soft_targets_are_the_teachers_full_sort_scores(base_config, vae_teacher,
                                                            run_dir):
    from recbole.data.dataloader import UserDataLoader
    from recbole.data.interaction import Interaction

    cfg, (train, _, _), model = _setup(
        "aekd", {**base_config, "train_neg_sample_args": None}, vae_teacher, run_dir,
        "MultiDAE", AE_STUDENT, prepare=prepare_user_data, distill_params={"temperature": 2.0})
    assert isinstance(train, UserDataLoader) and cfg["model"] == "DistillRecommender"
    batch = next(iter(train))
    users = torch.unique(batch["user_id"])
    teacher = model.teacher
    full = teacher.full_sort_predict(Interaction({"user_id": users})).view(users.numel(), -1)
    torch.testing.assert_close(model.distill.teacher_logits(users), full)
    model.eval()  # no dropout: the student's reconstruction is deterministic
    student = model.student.forward(model.student.get_rating_matrix(users))
    got = model.distill(batch)
    torch.testing.assert_close(got, aekd_loss(student[:, 1:], full[:, 1:], temperature=2.0))
    assert model.distill.loss.form == "softmax"


def test_aekd_runs_end_to_end_and_cdae_uses_bce(base_config, vae_teacher, run_dir):
    res = run_distillation(teacher_checkpoint=vae_teacher, student="MultiDAE", method="aekd",
                           dataset="tiny", student_config=AE_STUDENT,
                           config_dict={**base_config, "epochs": 1}, run_dir=run_dir)
    assert res["method"] == "aekd" and 0.0 <= res["test_result"]["ndcg@10"] <= 1.0
    _, _, model = _setup("aekd", {**base_config, "train_neg_sample_args": None}, vae_teacher,
                         run_dir, "CDAE", {"embedding_size": 8}, prepare=prepare_user_data)
    assert model.distill.loss.form == "bce"
    with pytest.raises(ValueError, match="RecVAE trains with RecBole's alternating"):
        run_distillation(teacher_checkpoint=vae_teacher, student="RecVAE", method="aekd",
                         dataset="tiny", config_dict=base_config, run_dir=run_dir)


def test_aekd_with_a_bpr_student_distils_the_batch_users_full_scores(base_config, vae_teacher,
                                                                     run_dir):
    from recbole.data.interaction import Interaction

    _, (train, _, _), model = _setup("aekd", base_config, vae_teacher, run_dir, "BPR",
                                     {"embedding_size": 8})
    batch = next(iter(train))  # per-interaction batches: users repeat
    users = torch.unique(batch["user_id"])
    assert users.numel() < batch["user_id"].numel()
    inter = Interaction({"user_id": users})
    s = model.student.full_sort_predict(inter).view(users.numel(), -1)
    t = model.teacher.full_sort_predict(inter).view(users.numel(), -1)
    torch.testing.assert_close(model.distill(batch), aekd_loss(s[:, 1:], t[:, 1:]))


def test_cli_runs_aekd_by_name(base_config, vae_teacher, run_dir, data_root, tmp_path):
    import json

    from recsys.cli import main

    out = tmp_path / "aekd.json"
    rc = main(["run", "--method", "aekd", "--student", "MultiDAE", "--teacher-checkpoint",
               str(vae_teacher), "--student-config", json.dumps(AE_STUDENT), "--dataset", "tiny",
               "--data-path", str(data_root), "--run-dir", str(run_dir), "--set", "epochs=1",
               "--set", f"checkpoint_dir={base_config['checkpoint_dir']}", "--quiet",
               "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["method"] == "aekd" and res["student"] == "MultiDAE" and res["epochs_run"] == 1


@pytest.fixture(scope="module")
def kg_root(data_root) -> Path:
    """``kgtiny``: the ml-100k-kg interactions of users 1-40, with RecBole's kg / link files."""
    ensure_kg_dataset("ml-100k-kg", data_root)
    src = data_root / "ml-100k-kg"
    dst = data_root / "kgtiny"
    dst.mkdir(exist_ok=True)
    for suffix in ("kg", "link"):
        (dst / f"kgtiny.{suffix}").write_bytes((src / f"ml-100k-kg.{suffix}").read_bytes())
    lines = (src / "ml-100k-kg.inter").read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t", 1)[0]) <= 40]
    (dst / "kgtiny.inter").write_text("\n".join(keep) + "\n")
    return data_root


def test_kg_dataset_keeps_ids_and_split_of_the_plain_dataset(kg_root, base_config):
    from recbole.data import create_dataset
    from recbole.utils import get_model, init_seed

    cfg = {**base_config, "load_col": KG_LOAD_COL}
    kg_cfg = build_config(get_model("CKE"), "kgtiny", config_dict=cfg)
    plain_cfg = build_config("BPR", "kgtiny", config_dict=cfg)
    splits = []
    for c in (kg_cfg, plain_cfg):
        init_seed(c["seed"], c["reproducibility"])
        ds = create_dataset(c)
        splits.append((list(ds.field2id_token["item_id"]), list(ds.field2id_token["user_id"]),
                       [p.inter_feat["item_id"].tolist() for p in ds.build()]))
    assert type(ds).__name__ == "Dataset"
    assert splits[0] == splits[1]
    linked = {ln.split("\t", 1)[0]
              for ln in (kg_root / "kgtiny" / "kgtiny.link").read_text().splitlines()[1:]}
    assert set(splits[0][0][1:]) <= linked  # the derived data has linked items only


def test_kg_teacher_exports_its_exact_scores_and_adkd_loss(kg_root, base_config, run_dir):
    from recbole.data.interaction import Interaction

    from recsys.recbole.runner import train_dataset, train_model

    cfg = {**base_config, "epochs": 1, "load_col": KG_LOAD_COL}
    res = train_model("CKE", "kgtiny", model_config={"embedding_size": 16}, config_dict=cfg)
    kg_ds = train_dataset(res.data[0])
    assert type(kg_ds).__name__ == "KnowledgeBasedDataset" and kg_ds.entity_num > kg_ds.item_num
    path, tres = ensure_teacher("CKE", "kgtiny", teacher_config={"embedding_size": 16},
                                config_dict={**base_config, "epochs": 1}, run_dir=run_dir)
    assert tres is not None  # trained through the KG trainer and exported
    assert torch.load(path, weights_only=True)["exported_from"] == "CKE"

    cfg_s, (train, _, _), model = _setup("adkd", base_config, path, run_dir, "BPR",
                                         {"embedding_size": 8}, dataset="kgtiny",
                                         distill_params={"k": 5})
    # the export scores exactly like the CKE it was taken from, on the plain dataset's ids
    mine = export_kg_teacher(res.model, run_dir / "cke-export.pt", name="CKE", dataset=kg_ds)
    exported, name = load_model(mine, cfg_s, train.dataset)
    assert name == "BPR" and exported.user_embedding.weight.shape[1] == 16
    users = torch.arange(1, 10)
    res.model.eval()
    with torch.no_grad():
        want = res.model.full_sort_predict(Interaction({"user_id": users})).view(9, -1)
        got = exported.full_sort_predict(Interaction({"user_id": users})).view(9, -1)
    torch.testing.assert_close(got, want)

    # adkd on a real batch: the loss is L_G + disc_weight * L_D of the sampled lists
    batch = next(iter(train))
    adapter = model.distill
    state = adapter.generator.get_state()
    total = adapter(batch)
    adapter.generator.set_state(state)
    users = torch.unique(batch["user_id"])
    teacher_lists = model.ctx.soft_labels.indices[users, :5]
    from recsys.recbole.adversarial import allowed_scores

    scores = allowed_scores(model.ctx, model.ctx.full_scores(model.student, users), users)
    student_lists = adapter.sample_student_lists(scores, 5)
    hist = model.ctx.history
    for row, u in enumerate(users.tolist()):  # unobserved, distinct items
        seen = set(hist.col[hist.ptr[u]:hist.ptr[u + 1]].tolist())
        assert not seen & set(student_lists[row].tolist())
        assert len(set(student_lists[row].tolist())) == 5
    d = adapter.loss.discriminator
    fake = d(users, student_lists)
    ref = generator_loss(plackett_luce_log_prob(scores, student_lists), fake) + \
        adapter.loss.disc_weight * discriminator_loss(d(users, teacher_lists), fake)
    torch.testing.assert_close(total, ref)
    # the teacher receives no gradient; the student does
    total.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.user_embedding.weight.grad is not None
