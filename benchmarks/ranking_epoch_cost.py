"""Where a ranking-distillation epoch's time goes (ml-100k, BPR d=200 -> BPR d=20, CPU).

Complements the ``--timing`` pass of :mod:`benchmarks.recbole_grid` (whole-epoch CPU time of
each method / the student alone's): the same run settings (grid seed, the method's YAML
defaults, RecBole's 2048-interaction batches, one torch thread), but a hand-written epoch loop
that times each part of the step with ``time.process_time`` (CPU time of this process):

* ``data``: RecBole's data loader (batch slicing and negative sampling);
* ``student``: the student's own loss, forward and backward;
* ``resample``: the method's per-epoch work (``on_epoch_start``: sampling, re-ranking);
* ``distill``: the distillation term, forward and backward, of which ``scoring`` is the
  student's scores of the sampled lists (``DistillContext.student_scores``, the
  ``[B, n_items]`` matrix product gathered at the lists; DCD's item side: ``bmm`` of each
  batch item's user list; forward and backward, replayed on the same batches) and
  ``experts`` DE's expert networks (:func:`recsys.losses.de.experts_mixture`, forward and
  backward, replayed the same way: the arithmetic of the 2 x 30 experts on up to
  ``max_entities`` entities of each kind) and ``loss+rest`` the loss itself and its per-batch
  lookups;
* ``step``: Adam.

The two loss terms are back-propagated separately (the gradients add up to the trainer's up to
rounding; this is a cost measurement, not a training run). A second table times three ways
of scoring one RRD batch's lists (dense product + gather, used; gathered ``bmm``; fused
multiply-sum): they cost about the same and differ in float rounding, so the committed
results' dense path stays.

Usage::

    python -m benchmarks.ranking_epoch_cost                 # rd,cd,rrd,unkd,dcd,ftd,de,de_rrd
    python -m benchmarks.ranking_epoch_cost --methods rrd --epochs 3

Writes ``benchmarks/results/recbole_ml100k/timing/breakdown/epoch_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS_DIR, machine_info, machine_markdown, markdown_table
from benchmarks.recbole_grid import (
    GRID_SEED,
    LABELS,
    STUDENT,
    TRAIN_BATCH,
    Bench,
    ensure_teacher_run,
    parse_args,
)
from graphkd.fileio import atomic_write_json, atomic_write_text

BENCH = Bench(name="recbole_ml100k", dataset="ml-100k", title="ml-100k (RecBole's shipped copy)")
DEFAULT_METHODS = ("rd", "cd", "rrd", "unkd", "dcd", "ftd", "de", "de_rrd")
PARTS = ("data", "student", "resample", "distill", "scoring", "experts", "step")


class _Clock:
    """Accumulates CPU seconds per named part."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}

    def add(self, part: str, t0: float) -> float:
        now = time.process_time()
        self.total[part] = self.total.get(part, 0.0) + now - t0
        return now


def _build(method: str, lr: float, teacher_path: Path, run_dir: str) -> tuple[Any, Any, Any]:
    """``(train_data, model, optimizer)`` exactly as the timing pass builds the run."""
    from recbole.utils import init_seed

    from recsys.recbole import DistillTrainer, build_config, prepare_data
    from recsys.recbole.runner import distill_path

    wrapper = distill_path(STUDENT[0]).wrapper(STUDENT[0])
    cfg = build_config(wrapper, BENCH.dataset, method=method, config_dict={
        "epochs": 1, "train_batch_size": TRAIN_BATCH, "eval_step": 1000, "seed": GRID_SEED,
        "gpu_id": "", "learning_rate": lr, "softlabel_cache_dir": str(Path(run_dir) / "softlabels"),
        "checkpoint_dir": str(Path(run_dir) / "checkpoints"), "student": STUDENT[0],
        "student_config": STUDENT[1], "teacher_checkpoint": str(teacher_path)})
    data = prepare_data(cfg)
    init_seed(cfg["seed"], cfg["reproducibility"])
    model = wrapper(cfg, data[0].dataset)
    trainer = DistillTrainer(cfg, model)
    model.prepare()
    return data[0], model, trainer.optimizer


def _timed_steps(train: Any, model: Any, opt: Any, epoch: int, clock: _Clock) -> None:
    """``on_epoch_start`` and one pass over ``train``, each part timed into ``clock``."""
    t = time.process_time()
    model.on_epoch_start(epoch)
    t = clock.add("resample", t)
    model.train()
    it = iter(train)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        t = clock.add("data", t)
        opt.zero_grad()
        own = model.student.calculate_loss(batch)
        own = sum(own) if isinstance(own, tuple) else own
        own.backward()
        t = clock.add("student", t)
        term = model.distill_weight * model.distill(batch)
        if term.requires_grad:  # the student alone ("none"): a constant 0
            term.backward()
        t = clock.add("distill", t)
        opt.step()
        t = clock.add("step", t)


def _epoch(train: Any, model: Any, opt: Any, epoch: int) -> dict[str, float]:
    """One timed epoch; ``scoring`` replays the recorded list-scoring calls."""
    import torch

    from recsys.losses import de
    from recsys.recbole import methods

    clock, calls, expert_calls = _Clock(), [], []
    ctx = model.ctx
    plain = type(ctx).student_scores
    item_lists = methods._item_list_scores

    def recorded(users: Any, items: Any) -> Any:
        calls.append((plain, (ctx, users, items), torch.is_grad_enabled()))
        return plain(ctx, users, items)

    def recorded_items(*a: Any) -> Any:  # DCD's item side: each item's list of users
        calls.append((item_lists, a, torch.is_grad_enabled()))
        return item_lists(*a)

    mixture = de.experts_mixture

    def recorded_experts(*a: Any, **kw: Any) -> Any:  # DE: every expert call, replayed below
        expert_calls.append((a, kw, torch.is_grad_enabled()))
        return mixture(*a, **kw)

    ctx.student_scores = recorded  # instance attribute: this benchmark's ctx only
    methods._item_list_scores = recorded_items
    de.experts_mixture = recorded_experts
    try:
        _timed_steps(train, model, opt, epoch, clock)
    finally:
        del ctx.student_scores
        methods._item_list_scores = item_lists
        de.experts_mixture = mixture
    t = time.process_time()
    for fn, a, grad in calls:  # as recorded: with backward, or without gradients
        with torch.set_grad_enabled(grad):
            s = fn(*a)
        if grad:
            s.backward(torch.ones_like(s))
    clock.add("scoring", t)
    t = time.process_time()
    for (s_in, alpha, *weights), kw, grad in expert_calls:  # inputs as leaves, same shapes
        with torch.set_grad_enabled(grad):
            out = mixture(s_in.detach().requires_grad_(grad), alpha.detach(), *weights, **kw)
        if grad:
            out.backward(torch.ones_like(out))
    clock.add("experts", t)
    opt.zero_grad()
    clock.total["batches"] = float(len(train))
    return clock.total


def epochs_of(method: str, epochs: int, lr: float, teacher_path: Path,
              run_dir: str) -> list[dict[str, float]]:
    """Per-part CPU seconds of ``epochs`` epochs (after one warm-up epoch)."""
    train, model, opt = _build(method, lr, teacher_path, run_dir)
    return [_epoch(train, model, opt, e) for e in range(epochs + 1)][1:]


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Median per-epoch CPU seconds of each part, and their sum (``epoch``)."""
    out: dict[str, Any] = {p: statistics.median(r.get(p, 0.0) for r in rows) for p in PARTS}
    out["batches"] = rows[0]["batches"]
    out["epoch"] = sum(out[p] for p in PARTS if p not in ("scoring", "experts"))
    return out


def scoring_alternatives(repeats: int = 20) -> dict[str, Any]:
    """CPU ms of one RRD batch's list scoring (forward + backward) three ways, and their
    largest difference to the dense path (ml-100k shapes: 690 users, 80 items, d=20)."""
    import torch

    g = torch.Generator().manual_seed(0)
    users = torch.randperm(944, generator=g)[:690].sort().values
    items = torch.randint(1, 1683, (690, 80), generator=g)
    u_w = torch.randn(944, 20, generator=g).mul_(0.1).requires_grad_()
    i_w = torch.randn(1683, 20, generator=g).mul_(0.1).requires_grad_()

    def dense() -> Any:  # recsys.recbole.context.list_scores for K >= DENSE_MIN_LIST
        return (u_w[users] @ i_w.T).gather(1, items)

    def gathered() -> Any:  # its path for short lists
        return torch.bmm(i_w[items], u_w[users].unsqueeze(2)).squeeze(2)

    def fused() -> Any:
        return (i_w[items] * u_w[users].unsqueeze(1)).sum(-1)

    ref = dense().detach()
    out: dict[str, Any] = {}
    for name, fn in (("dense product + gather (used)", dense), ("gathered bmm", gathered),
                     ("fused multiply-sum", fused)):
        times = []
        for _ in range(repeats):
            u_w.grad = i_w.grad = None
            t0 = time.process_time()
            s = fn()
            s.backward(torch.ones_like(s))
            times.append(time.process_time() - t0)
        out[name] = {"ms": 1e3 * statistics.median(times),
                     "max_abs_diff": float((fn().detach() - ref).abs().max())}
    return out


def render(result: dict[str, Any]) -> str:
    none = result["student_alone_epoch"]
    rows = []
    for m, r in result["methods"].items():
        rows.append([LABELS[m], f"{r['epoch']:.3f}", f"{r['epoch'] / none:.2f}",
                     f"{r['data']:.3f}", f"{r['student']:.3f}", f"{r['resample']:.3f}",
                     f"{r['distill']:.3f}", f"{r['scoring']:.3f}", f"{r['experts']:.3f}",
                     f"{max(r['distill'] - r['scoring'] - r['experts'], 0.0):.3f}",
                     f"{r['step']:.3f}"])
    lines = ["# Ranking-distillation epoch cost, ml-100k", "",
             "Produced by `python -m benchmarks.ranking_epoch_cost` (see its docstring for the "
             "method). CPU seconds per epoch of this process, one torch thread, median of "
             f"{result['epochs']} epochs after a warm-up one (the student alone: twice as "
             "many, measured before and after the methods); "
             f"{result['batches']:.0f} batches "
             "of 2048 interactions; the methods' YAML defaults. The whole-epoch ratios of the "
             "trainer are in `../<teacher>-<method>.json` (`--timing`).", "",
             f"Machine: {machine_markdown(result['machine']).rstrip('.')}.", "",
             "The student alone is the same loop with the `none` method (no distillation "
             "term).", ""]
    lines += [markdown_table(["method", "epoch", "/ alone", "data", "student", "resample",
                             "distill", "of which scoring", "of which experts", "loss+rest",
                             "step"], rows)]
    lines += ["", "One RRD batch's list scoring, forward + backward (690 users x 80 items, "
              "d=20):", ""]
    lines += [markdown_table(["way", "CPU ms", "max abs diff to the dense path"],
                             [[k, f"{v['ms']:.2f}", f"{v['max_abs_diff']:.1e}"]
                              for k, v in result["scoring_alternatives"].items()])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ranking_epoch_cost",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up")
    p.add_argument("--run-dir", default="runs/recbole")
    p.add_argument("--out", default=str(Path(RESULTS_DIR) / BENCH.name / "timing" / "breakdown"))
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    grid = parse_args(BENCH, ["--run-dir", a.run_dir])  # the grid's teacher and lr settings
    teacher_path = ensure_teacher_run(BENCH, grid, "bpr", GRID_SEED)
    methods = [m.strip() for m in a.methods.split(",") if m.strip() not in ("", "none")]

    def run(m: str) -> list[dict[str, float]]:
        return epochs_of(m, a.epochs, grid.lrs[0], teacher_path, a.run_dir)

    # the student alone before and after the methods: one slow spell on a shared machine
    # does not set everyone's ratio
    alone = run("none")
    rows = {m: run(m) for m in methods}
    results = {"none": summarize(alone + run("none")), **{m: summarize(r)
                                                         for m, r in rows.items()}}
    result = {"epochs": a.epochs, "batches": results["none"]["batches"],
              "student_alone_epoch": results["none"]["epoch"], "methods": results,
              "scoring_alternatives": scoring_alternatives(),
              "machine": machine_info("cpu")}
    out = Path(a.out)
    atomic_write_json(out / "epoch_cost.json", result, indent=1)
    md = render(result)
    atomic_write_text(out / "epoch_cost.md", md)
    print(md)


if __name__ == "__main__":
    main()
