r"""Epoch time of distillation with the offline teacher cache vs the live teacher vs the student.

Run::

    python -m benchmarks.teacher_cache                  # writes results/teacher_cache.{json,md}
    python -m benchmarks.teacher_cache --epochs 3 --no-write
    python -m benchmarks.teacher_cache --device cuda

Data: the embedded RDKit ChEMBL series (``data.name: chembl``: 1,017 molecules, scaffold
split; the ~814 training molecules), batch size 32, shuffled. Models: the ``gin_teacher`` preset
(GIN-E, 5 layers, hidden 300: the molhiv-style teacher, random weights: the cost does not
depend on training) and the ``gcn_student`` preset (GCN, 2 layers, hidden 48). Distillation:
KD on the logits (weight 0.9) + LSP on the bonds (teacher ``convs.4`` -> student ``convs.1``)
+ cross-entropy (0.1).

In **one run**, three training modes share the same loop (Adam, forward, backward, step; data
loading included) and are timed epoch by epoch, **interleaved** (student, live, cached, student,
...) so that load on a shared machine hits them alike:

* ``student``: the student alone (cross-entropy);
* ``live``: the Distiller running the frozen teacher on every batch;
* ``cached``: the same Distiller reading the teacher's outputs from
  :func:`graphkd.teacher_cache.cache_teacher` (float32; built once before, its build time and
  disk size reported separately; ``--dtype float16`` to halve them).

Reported: the median epoch time of each mode over ``--epochs`` epochs (after one warm-up epoch
each), the ratios live / student, cached / student and live / cached, and the median time of one
epoch of loading batches and reading the cache, against loading only (no training).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._util import (
    fmt_ratio,
    fmt_time,
    machine_info,
    machine_markdown,
    markdown_table,
    sync,
    write_results,
)


def _setup(device: str, dtype: str, cache_root: Path) -> dict[str, Any]:
    from torch_geometric.loader import DataLoader

    from graphkd import Distiller, Match
    from graphkd.config import DataConfig
    from graphkd.models import build_model
    from graphkd.pipeline.data import load_data
    from graphkd.teacher_cache import cache_teacher, index_samples

    bundle = load_data(DataConfig(name="chembl"))
    train = index_samples(bundle.train)
    loader = DataLoader(train, batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0), drop_last=True)
    torch.manual_seed(0)
    teacher = build_model("gin_teacher", num_classes=2).to(device)
    student = build_model("gcn_student", num_classes=2).to(device)
    plain = build_model("gcn_student", num_classes=2).to(device)
    plain.load_state_dict(student.state_dict())
    example = next(iter(loader)).to(device)
    distiller = Distiller(
        teacher, student,
        [Match("convs.4", "convs.1", "lsp", weight=0.1, params={"graph": "input"})],
        logits="kd", logits_weight=0.9, task_loss=nn.CrossEntropyLoss(), task_weight=0.1,
        example=example)
    t0 = time.perf_counter()
    caches = cache_teacher(distiller, train, cache_root, dtype=dtype, batch_size=256)
    sync(device)
    build_s = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in caches[0].path.iterdir())
    source = distiller.teacher_source
    distiller.teacher_source = None
    return {"loader": loader, "distiller": distiller, "plain": plain, "source": source,
            "build_s": build_s, "disk_bytes": disk, "num_train": len(train),
            "cache_arrays": caches[0].manifest["arrays"]}


def _epoch(mode: str, s: dict[str, Any], opts: dict[str, Any], device: str) -> float:
    d, plain, loader = s["distiller"], s["plain"], s["loader"]
    ce = nn.CrossEntropyLoss()
    model = plain if mode == "student" else d
    if mode != "student":
        d.teacher_source = s["source"] if mode == "cached" else None
    model.train()
    opt = opts[mode]
    sync(device)
    t0 = time.perf_counter()
    for data in loader:
        data = data.to(device)
        opt.zero_grad(set_to_none=True)
        if mode == "student":
            loss = ce(plain(data), data.y.view(-1))
        else:
            loss = sum(d(data)[1].values())
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def run(epochs: int, device: str, dtype: str, cache_root: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        s = _setup(device, dtype, Path(cache_root) if cache_root else Path(tmp))
        opts = {"student": torch.optim.Adam(s["plain"].parameters(), lr=1e-3),
                "live": torch.optim.Adam(s["distiller"].parameters(), lr=1e-3),
                "cached": torch.optim.Adam(s["distiller"].parameters(), lr=1e-3)}
        modes = ("student", "live", "cached")
        times: dict[str, list[float]] = {m: [] for m in modes}
        for m in modes:  # warm-up
            _epoch(m, s, opts, device)
        for _ in range(epochs):
            for m in modes:
                times[m].append(_epoch(m, s, opts, device))
        # the cache's share of a cached epoch: one epoch of batches loaded and looked up,
        # against one epoch of batches loaded only (interleaved)
        lookup: list[float] = []
        load: list[float] = []
        for _ in range(epochs):
            for out, read in ((load, False), (lookup, True)):
                sync(device)
                t0 = time.perf_counter()
                for data in s["loader"]:
                    data = data.to(device)
                    if read:
                        s["source"](data)
                sync(device)
                out.append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "machine": machine_info(device),
        "setting": {"data": "chembl (embedded RDKit ChEMBL series, scaffold split, train)",
                    "num_train": s["num_train"], "batch_size": 32,
                    "teacher": "gin_teacher (GIN-E, 5 layers, hidden 300)",
                    "student": "gcn_student (GCN, 2 layers, hidden 48)",
                    "losses": "0.1 CE + 0.9 KD + 0.1 LSP[convs.4 -> convs.1, input graph]",
                    "epochs_timed": epochs, "dtype": dtype},
        "cache": {"build_s": s["build_s"], "disk_bytes": s["disk_bytes"],
                  "arrays": s["cache_arrays"]},
        "epoch_s": times, "median_epoch_s": med,
        "load_epoch_s": statistics.median(load),
        "load_and_lookup_epoch_s": statistics.median(lookup),
        "ratios": {"live/student": med["live"] / med["student"],
                   "cached/student": med["cached"] / med["student"],
                   "live/cached": med["live"] / med["cached"]},
    }


def markdown(res: dict[str, Any]) -> str:
    med, r, st, c = res["median_epoch_s"], res["ratios"], res["setting"], res["cache"]
    rows = [["student alone", fmt_time(med["student"]), "1.00"],
            ["distill, live teacher", fmt_time(med["live"]), fmt_ratio(r["live/student"])],
            ["distill, cached teacher", fmt_time(med["cached"]),
             fmt_ratio(r["cached/student"])]]
    return "\n".join([
        "# Teacher cache: epoch time", "",
        f"{st['teacher']} -> {st['student']} on {st['data']} ({st['num_train']} molecules, "
        f"batch {st['batch_size']}); {st['losses']}. Median of {st['epochs_timed']} epochs per "
        "mode, interleaved (one warm-up epoch each), data loading, forward, backward and "
        "optimizer step included. `python -m benchmarks.teacher_cache`.", "",
        markdown_table(["mode", "epoch (median)", "vs student alone"], rows), "",
        f"Live teacher / cached teacher: **{r['live/cached']:.2f}x**. Reading the cache: an "
        f"epoch of batches loaded and looked up takes {fmt_time(res['load_and_lookup_epoch_s'])}"
        f", loaded only {fmt_time(res['load_epoch_s'])} (no training); the rest of the gap to "
        f"the student alone is the losses (KD, LSP) and their backward. Cache ({st['dtype']}): "
        f"built once in {fmt_time(c['build_s'])}, {c['disk_bytes'] / 2**20:.1f} MiB on disk "
        "(teacher `convs.4` node features and logits).", "",
        "Machine: " + machine_markdown(res["machine"]),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per mode (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--cache-root", type=Path, default=None,
                   help="keep the cache here (default: a temporary directory)")
    p.add_argument("--no-write", action="store_true", help="print only, write no results")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = run(a.epochs, a.device, a.dtype, a.cache_root)
    md = markdown(res)
    print(md)
    if not a.no_write:
        for path in write_results("teacher_cache", res, md):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
