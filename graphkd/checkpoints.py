"""What a training run keeps on disk: checkpoints, ``log.csv`` and every RNG state it owns.

:func:`graphkd.train.fit` writes ``best.pt`` (the best-validation weights), ``last.pt`` (weights,
optimizer, scheduler, epoch, best-so-far, history and the RNG states of :func:`rng_state`) and
``log.csv`` (rewritten from the history) through this module, and reads them back for an exact
resume. Every file is written atomically (:mod:`graphkd.fileio`), holds plain tensors and numbers
only and is read with ``torch.load(weights_only=True)`` (:func:`load_checkpoint`).

The RNG states are those of the whole run: torch's global RNG (and every initialised CUDA
device's), NumPy's and Python ``random``'s global RNGs, the DataLoaders' own generators
(``loader.generator``, ``loader.sampler.generator``, ``loader.batch_sampler.sampler.generator``)
and any ``torch.Generator`` held as an attribute by a module of the model, a Distiller's
teachers included (:func:`owned_generators`; e.g. the ``seed=`` generators of G-CRD and GSP).
They are taken at the end of an epoch, i.e. at the start of the next one, so a resumed run
replays the interrupted epoch with the same shuffle order, dropout masks, node samples and
augmentation. Under several processes only rank 0 writes ``last.pt`` and every rank restores
rank 0's states.
"""

from __future__ import annotations

import csv
import io
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graphkd.distill import Distiller
from graphkd.fileio import atomic_torch_save, atomic_write_text

__all__ = ["load_checkpoint", "save_checkpoint", "write_log", "owned_generators", "rng_state",
           "set_rng_state"]

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a graphkd checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a corrupt file or not a graphkd checkpoint (no ``"model"`` entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        detail = (str(e).splitlines() or [""])[0][:160]
        raise ValueError(f"checkpoint {path} is corrupt or not a weights-only graphkd "
                         f"checkpoint ({type(e).__name__}: {detail}); delete it or pass "
                         "resume=False.") from e
    if not isinstance(ck, dict) or "model" not in ck:
        raise ValueError(f"{path} is not a graphkd checkpoint (no 'model' state_dict).")
    return ck


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` made atomic: an interruption never leaves half a file."""
    atomic_torch_save(obj, path)


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    """``log.csv`` rewritten (atomically) from the whole history: one row per finished epoch.

    Rewriting rather than appending keeps the file equal to the checkpoint's history, so a run
    killed between two writes and resumed never logs an epoch twice.
    """
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())



def _attr_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


_LOADER_GENERATORS = ("generator", "sampler.generator", "batch_sampler.sampler.generator")


def owned_generators(model: nn.Module, loaders: dict[str, Any]) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` the run owns besides the global ones, by a stable name.

    * the loaders': ``loader.generator``, ``loader.sampler.generator`` and
      ``loader.batch_sampler.sampler.generator`` (shuffle order, worker seeds);
    * the modules': any ``torch.Generator`` held as an attribute by a module of ``model``
      (walking ``named_modules``; a Distiller's teachers too), e.g. the ``seed=`` generator of
      G-CRD or GSP.

    The same object reached twice is listed once (under its first name).
    """
    gens: dict[str, torch.Generator] = {}
    seen: set[int] = set()

    def add(name: str, g: Any) -> None:
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            gens[name] = g

    for lname, loader in loaders.items():
        for path in _LOADER_GENERATORS:
            add(f"{lname}.{path}", _attr_path(loader, path))
    roots = [("", model)]
    if isinstance(model, Distiller):
        roots += [(f"<teacher{i}>", t) for i, t in enumerate(model.teachers)]
    for prefix, root in roots:
        for mname, module in root.named_modules(prefix=prefix):
            for attr, value in vars(module).items():
                add(f"{mname}.{attr}" if mname else attr, value)
    return gens


def rng_state(model: nn.Module, loaders: dict[str, Any]) -> dict[str, Any]:
    """All RNG states of the run as plain tensors/numbers (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "generators": {k: g.get_state() for k, g in owned_generators(model, loaders).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], model: nn.Module, loaders: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output; warn about RNGs it cannot match (resume inexact)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) != torch.cuda.device_count():
            log.warning("resume: the checkpoint holds the RNG states of %d CUDA devices, this "
                        "machine has %d; restoring the first ones.", len(cuda),
                        torch.cuda.device_count())
        for i, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].cpu().numpy().astype(np.uint32),  # noqa: NPY002
                         int(npst["pos"]), int(npst["has_gauss"]), float(npst["gauss"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()),
                     py["gauss"]))
    saved = dict(state.get("generators", {}))
    unmatched = []
    for name, g in owned_generators(model, loaders).items():
        if name in saved:
            g.set_state(saved.pop(name).cpu())
        else:
            unmatched.append(name)
    if unmatched or saved:
        log.warning("resume is not exact: RNG generators %s are not in the checkpoint and %s "
                    "of the checkpoint are not in this run (build the loaders and losses as "
                    "in the interrupted run).", sorted(unmatched), sorted(saved))
