"""Knowledge-aware teachers (RecBole's KGAT, CKE) for plain students (Chen et al., TOIS 2018).

RecBole's knowledge-aware models (``ModelType.KNOWLEDGE``) train on a ``KnowledgeBasedDataset``:
the interactions plus a knowledge graph (``<name>.kg``: head, relation, tail) and an item ->
entity link (``<name>.link``), loaded when ``load_col`` names them (:data:`KG_LOAD_COL`; RecBole's
``ml-100k.yaml`` loads the interactions only). That dataset keeps only the items that have a
link (ml-100k: 1,599 of 1,682), so a student trained on the plain ``ml-100k`` would see other
items. :func:`ensure_kg_dataset` therefore writes ``ml-100k-kg`` -- RecBole's ml-100k
interactions of linked items, with its ``.kg`` and ``.link`` files -- on which the plain
``Dataset`` and the ``KnowledgeBasedDataset`` have the same users, items, ids and, for one seed,
the same train/valid/test split (checked in ``tests/recsys/recbole/test_autoencoder_kg.py``).

A trained KGAT / CKE scores ``u . i`` with its final embeddings (KGAT: attentive propagation over
the collaborative knowledge graph, all layers concatenated; CKE: ``item + entity`` embeddings):
:func:`export_kg_teacher` writes those as a ``BPR`` state file of that width
(:data:`KG_EMBEDDINGS`), whose ``full_sort_predict`` equals the KG model's exactly. The student's
run then needs neither the knowledge graph nor RecBole's KG data loaders, and every method
(RD, RRD, ``adkd``, DE, ...) works with the knowledge-aware teacher unchanged.

KGAT: RecBole 1.2.1's ``KGAT.init_graph`` calls ``dgl.edge_subgraph(..., preserve_nodes=True)``
and ``adjacency_matrix(scipy_fmt=...)``, which DGL >= 1.0 removed, so KGAT cannot be built with
the project's pinned DGL 1.1; its export entry follows ``KGAT.full_sort_predict`` (users' and
items' concatenated layer outputs) for stacks where it builds. CKE is the tested teacher.

Example:
    >>> from recsys.recbole import run_distillation
    >>> run_distillation(teacher="CKE", student="BPR", method="adkd",
    ...                  dataset="ml-100k-kg")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from graphkd.fileio import atomic_torch_save, file_lock

__all__ = ["KG_LOAD_COL", "KG_DATASETS", "KG_EMBEDDINGS", "ensure_kg_dataset", "kg_config",
           "kg_embeddings", "export_kg_teacher", "ensure_kg_teacher"]

#: the atomic files and columns a knowledge-aware model reads (RecBole's ml-100k field names)
KG_LOAD_COL: dict[str, list[str]] = {
    "inter": ["user_id", "item_id", "rating", "timestamp"],
    "kg": ["head_id", "relation_id", "tail_id"],
    "link": ["item_id", "entity_id"],
}

#: derived dataset name -> the RecBole dataset it is cut from (interactions of linked items)
KG_DATASETS: dict[str, str] = {"ml-100k-kg": "ml-100k"}

#: model class name -> ``model -> (user [n_users, d], item [n_items, d])`` final embeddings
#: whose dot products are the model's ``full_sort_predict`` (model in eval mode, no gradients)
KG_EMBEDDINGS: dict[str, Callable[[nn.Module], tuple[Tensor, Tensor]]] = {
    "KGAT": lambda m: (lambda u, e: (u, e[:m.n_items]))(*m.forward()),
    "CKE": lambda m: (m.user_embedding.weight,
                      m.item_embedding.weight + m.entity_embedding.weight[:m.n_items]),
}


def _recbole_source(name: str) -> Path:
    import recbole

    return Path(recbole.__file__).parent / "dataset_example" / name


def ensure_kg_dataset(name: str, data_path: str | os.PathLike) -> Path | None:
    """Write ``<data_path>/<name>/<name>.{kg,link,inter}`` for a derived KG dataset
    (:data:`KG_DATASETS`; ``.inter`` last, atomically, under a lock); None when ``name`` is not
    one (nothing done). An existing ``<name>.inter`` is kept (the user's own copy wins).

    Raises:
        FileNotFoundError: RecBole's source files are missing.
    """
    if name not in KG_DATASETS:
        return None
    from graphkd.fileio import atomic_write_bytes, atomic_write_text

    folder = Path(data_path) / name
    inter = folder / f"{name}.inter"
    if inter.is_file():
        return folder
    src_name = KG_DATASETS[name]
    src = _recbole_source(src_name)
    files = {s: src / f"{src_name}.{s}" for s in ("inter", "kg", "link")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"RecBole's {src_name} files are missing: {missing}")
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".materialize"):
        if inter.is_file():
            return folder
        for suffix in ("kg", "link"):
            atomic_write_bytes(folder / f"{name}.{suffix}", files[suffix].read_bytes())
        linked = {ln.split("\t", 1)[0] for ln in files["link"].read_text().splitlines()[1:]}
        lines = files["inter"].read_text().splitlines()
        keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[1] in linked]
        atomic_write_text(inter, "\n".join(keep) + "\n")
    return folder


def kg_config(config_dict: dict[str, Any]) -> dict[str, Any]:
    """``config_dict`` with ``load_col`` = :data:`KG_LOAD_COL` unless the user set one."""
    return config_dict if "load_col" in config_dict else {**config_dict, "load_col": KG_LOAD_COL}


@torch.no_grad()
def kg_embeddings(model: nn.Module) -> tuple[Tensor, Tensor]:
    """The final ``(user, item)`` embeddings of a KGAT / CKE model (eval mode) whose products
    are its scores.

    Raises:
        ValueError: a model without an entry in :data:`KG_EMBEDDINGS`.
    """
    name = type(model).__name__
    if name not in KG_EMBEDDINGS:
        raise ValueError(f"no embedding export for {name}: knowledge-aware teachers may be "
                         f"{', '.join(sorted(KG_EMBEDDINGS))}")
    was = model.training
    model.eval()
    try:
        u, i = KG_EMBEDDINGS[name](model)
    finally:
        model.train(was)
    return u.detach().float().cpu(), i.detach().float().cpu()


def export_kg_teacher(model: nn.Module, path: str | os.PathLike, *, name: str,
                      dataset: Any, result: dict[str, Any] | None = None) -> Path:
    """Write a KGAT / CKE teacher as a BPR state file of its final embeddings
    (:func:`recsys.recbole.zoo.load_model` reads it; ``exported_from`` names the KG model).

    Args:
        model: the trained knowledge-aware model.
        path: the state file to write (atomically).
        name: its RecBole model name.
        dataset: its (knowledge-based) training dataset: the user / item fingerprint.
    """
    from recsys.recbole.zoo import STATE_FORMAT, dataset_fingerprint

    users, items = kg_embeddings(model)
    state = {
        "format": STATE_FORMAT,
        "model": "BPR",
        "model_config": {"embedding_size": int(users.shape[1])},
        **dataset_fingerprint(dataset),
        "state_dict": {"user_embedding.weight": users, "item_embedding.weight": items},
        "exported_from": name,
    }
    return atomic_torch_save(state, path)


def ensure_kg_teacher(teacher: str, dataset: str, *, teacher_config: dict[str, Any] | None = None,
                      config_file_list: list[str] | None = None,
                      config_dict: dict[str, Any] | None = None,
                      run_dir: str | os.PathLike = "runs/recbole",
                      verbose: bool = False) -> tuple[Path, dict[str, Any] | None]:
    """:func:`recsys.recbole.runner.ensure_teacher` for a knowledge-aware teacher: the derived
    dataset written if needed (:func:`ensure_kg_dataset`), ``load_col`` set to
    :data:`KG_LOAD_COL` unless given, the model trained by RecBole's own trainer for it
    (``KGATTrainer`` / ``KGTrainer``, with safe checkpoints) and exported
    (:func:`export_kg_teacher`). Reused from ``run_dir`` when it exists.

    Returns:
        ``(path, result)``; ``result`` is the training result dict, or None when reused.
    """
    from graphkd.datasets import data_root
    from graphkd.fileio import safe_child
    from recsys.recbole.runner import (
        _teacher_key,
        check_dataset_name,
        train_dataset,
        train_model,
    )

    check_dataset_name(dataset)
    if teacher not in KG_EMBEDDINGS:
        raise ValueError(f"knowledge-aware teacher {teacher!r} is not supported: use "
                         f"{', '.join(sorted(KG_EMBEDDINGS))}")
    teacher_config = dict(teacher_config or {})
    config_dict = kg_config(dict(config_dict or {}))
    ensure_kg_dataset(dataset, config_dict.get("data_path") or data_root())
    key = _teacher_key(teacher, dataset, teacher_config, config_file_list, config_dict)
    path = safe_child(Path(run_dir) / "teachers", f"{dataset}-{teacher}-{key}.pt",
                      what="teacher file")
    if path.is_file():
        return path, None
    config_dict.setdefault("checkpoint_dir", str(Path(run_dir) / "checkpoints"))
    res = train_model(teacher, dataset, model_config=teacher_config,
                      config_file_list=config_file_list, config_dict=config_dict, verbose=verbose)
    export_kg_teacher(res.model, path, name=teacher, dataset=train_dataset(res.data[0]))
    return path, res.result
