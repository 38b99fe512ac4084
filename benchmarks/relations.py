r"""Relation diagnostics of trained students: linear CKA and kNN overlap with the teacher.

Run::

    python -m benchmarks.relations                       # chembl, + ogbg-molhiv when present
    python -m benchmarks.relations --datasets ogbg-molhiv --seed 0
    python -m benchmarks.relations --set student.train.epochs=3 --no-write   # quick look

For each molecule config of ``benchmarks.molecules`` (``configs/molecules_chembl.yaml``, the
embedded ChEMBL series; ``configs/molecules_molhiv.yaml`` when ogbg-molhiv is in the data root),
the teacher is trained once (or loaded from the pipeline's cache), then one student per method
(student alone, KD, LSP, GSP, G-CRD; ``--methods``) is trained exactly as in the quality
benchmark (same config, seed, loop; best-validation weights restored), and
:func:`graphkd.diagnostics.relation_report` compares it with the teacher on the **test** split:

* ``level="node"``: the teacher's last message-passing layer vs the student's (atoms; a uniform
  random subsample of ``--max-nodes`` atoms);
* ``level="graph"``: the graph embeddings (``pool``: the mean over atoms of those layers'
  outputs in these models), every test molecule.

Writes ``benchmarks/results/relations.{json,md,png}`` (one heat-map per dataset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS_DIR, machine_info, machine_markdown, write_results
from benchmarks.molecules import DATASETS

METHODS = ("student", "kd", "lsp", "gsp", "gcrd")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _last_conv(model: Any) -> str:
    return f"convs.{len(model.convs) - 1}"


def run_dataset(key: str, cfg_file: str, methods: list[str], seed: int, k: int,
                max_nodes: int, sets: list[str]) -> dict[str, Any]:
    from graphkd.config import load_config
    from graphkd.diagnostics import relation_report
    from graphkd.metrics import get_metric
    from graphkd.pipeline import load_data, make_loader, resolve_device, train_on, train_teacher
    from graphkd.pipeline.runs import _make_student

    cfg = load_config(CONFIGS / cfg_file, [f"seeds=[{seed}]", *sets])
    data = load_data(cfg.data)
    device = resolve_device(cfg.device)
    teacher, _ = train_teacher(cfg, data)
    test = make_loader(data.test, cfg.student.train.eval_batch_size or 256, False, seed)
    out: dict[str, Any] = {"config": cfg_file, "seed": seed, "k": k, "runs": {}}
    for m in methods:
        student, module, _, _ = _make_student(cfg, m, seed, teacher, data, device)
        hist = train_on(module, data, cfg.student.train, metric=get_metric(cfg.metric),
                        device=device, seed=seed, restore_best=True)
        tl, sl = _last_conv(teacher), _last_conv(student)
        node = relation_report(teacher, student, test, [(tl, sl)], k=k, level="node",
                               max_samples=max_nodes, seed=seed, device=device)
        graph = relation_report(teacher, student, test, [("pool", "pool")], k=k,
                                level="graph", max_samples=100_000, seed=seed, device=device)
        out["runs"][m] = {"test": hist["test_at_best"], "rows": node.rows + graph.rows}
        print(f"[relations] {key} {m}: test {hist['test_at_best']:.4f}; "
              + "; ".join(f"{r['teacher']}->{r['student']} ({r['level']}) CKA {r['cka']:.3f} "
                          f"kNN {r['knn_overlap']:.3f}" for r in out["runs"][m]["rows"]),
              flush=True)
    return out


def _reports(res: dict[str, Any]) -> dict[str, Any]:
    from graphkd.diagnostics import RelationReport

    return {m: RelationReport(r["rows"], "mixed", res["k"]) for m, r in res["runs"].items()}


def markdown(blob: dict[str, Any]) -> str:
    from graphkd.diagnostics import relation_table

    parts = ["# Relation diagnostics: teacher vs trained students", "",
             "Linear CKA and kNN overlap (mean fraction of shared neighbours, self excluded) "
             "between the teacher and each trained student on the test split "
             "(`python -m benchmarks.relations`; see its docstring). Node level: a uniform "
             "subsample of atoms; graph level: every test molecule.", ""]
    for key, res in blob["datasets"].items():
        parts += [f"## {key}", "", f"Config `{res['config']}`, seed {res['seed']}, "
                  f"k = {res['k']}. Test metric at the best validation epoch: "
                  + ", ".join(f"{m} {r['test']:.4f}" for m, r in res["runs"].items()) + ".", "",
                  relation_table(_reports(res)), "", f"![{key}](relations_{key}.png)", ""]
    for note in blob.get("notes", []):
        parts.append(f"- {note}")
    parts += ["", "Machine: " + machine_markdown(blob["machine"])]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-nodes", type=int, default=4000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    blob: dict[str, Any] = {"machine": machine_info("cpu"), "datasets": {}, "notes": []}
    for key in a.datasets:
        cfg_file, check = DATASETS[key]
        reason = check() if check is not None else None
        if reason:
            blob["notes"].append(f"{key}: skipped ({reason}).")
            print(f"[relations] {key}: skipped ({reason})", flush=True)
            continue
        blob["datasets"][key] = run_dataset(key, cfg_file, a.methods, a.seed, a.k,
                                            a.max_nodes, a.set)
    md = markdown(blob)
    print(md)
    if not a.no_write:
        from graphkd.diagnostics import plot_relation_heatmap

        for key, res in blob["datasets"].items():
            print(plot_relation_heatmap(_reports(res), RESULTS_DIR / f"relations_{key}.png",
                                        title=f"{key}: teacher vs students"))
        for path in write_results("relations", blob, md):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
