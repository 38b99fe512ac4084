"""The public API: `from graphkd import ...` (lazy, light), old names kept, the README's imports,
the layering of distill / hooks / inputs / interop / losses (no cycles, lazy imports included)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import graphkd

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "graphkd"
API = ["Distiller", "Match", "Teacher", "fit", "evaluate", "get_loss", "register"]


def test_public_names_are_lazy_and_light():
    code = (
        "import sys, json, graphkd\n"
        "before = sorted(m for m in sys.modules if m.startswith('graphkd.'))\n"
        f"from graphkd import {', '.join(API)}, DistillLoss, pyg_call, dgl_call, pyg_call_any\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'dgl', 'recbole', 'rdkit', 'matplotlib'})\n"
        "print(json.dumps([before, heavy]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    before, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == [] and heavy == []


def test_public_names_are_the_real_objects():
    from graphkd.distill import Distiller, Match, Teacher
    from graphkd.losses import get_loss, register
    from graphkd.train import evaluate, fit

    assert (graphkd.Distiller, graphkd.Match, graphkd.Teacher) == (Distiller, Match, Teacher)
    assert (graphkd.fit, graphkd.evaluate) == (fit, evaluate)
    assert (graphkd.get_loss, graphkd.register) == (get_loss, register)
    assert set(API) <= set(dir(graphkd)) and set(API) <= set(graphkd.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        graphkd.nope  # noqa: B018


def test_old_distill_names_still_import():
    from graphkd import distill, hooks, inputs

    for name in ("graph_context", "pyg_call", "default_call", "default_target", "logits_of",
                 "prepare_target", "mean_pool", "dgl_context"):
        assert getattr(distill, name) is getattr(inputs, name)
    assert distill._to_device is inputs.to_device
    assert distill.FeatureHooks is hooks.FeatureHooks
    assert distill.resolve_module is hooks.resolve_module


def test_readme_import_lines_resolve():
    """Every `from graphkd... import ...` line in the README's code blocks imports."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    lines = [ln for b in blocks for ln in b.splitlines()
             if re.match(r"\s*from (graphkd|recsys)[\w.]* import ", ln)]
    assert any("from graphkd import" in ln for ln in lines)
    for ln in lines:
        if "recsys.recbole" in ln:  # RecBole is an optional stack
            continue
        exec(ln.strip(), {})


# --------------------------------------------------------------------------- layering
def _imports(path: Path) -> set[str]:
    """graphkd modules imported anywhere in a file (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("graphkd")}


def _module_files() -> dict[str, Path]:
    files = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = p
    return files


def _graph() -> dict[str, set[str]]:
    files = _module_files()
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def test_layering_of_distill_hooks_inputs_interop_losses():
    g = _graph()
    assert g["graphkd.inputs"] <= {"graphkd._context"}  # torch and the context vocabulary
    assert g["graphkd.hooks"] <= {"graphkd.inputs", "graphkd._context"}
    assert not {"graphkd.distill", "graphkd.train"} & _closure(g, "graphkd.interop")
    for m in [m for m in g if m.startswith("graphkd.losses")]:
        assert not {"graphkd.distill", "graphkd.hooks", "graphkd.inputs",
                    "graphkd.interop"} & _closure(g, m), m
    for m in ("graphkd.distill", "graphkd.hooks", "graphkd.inputs", "graphkd.interop",
              "graphkd.losses", "graphkd.losses.base"):
        assert m not in _closure(g, m), f"{m} is in an import cycle"


def test_distiller_reads_loss_facts_as_plain_attributes():
    from graphkd.losses import LOSSES, DistillLoss

    src = (PACKAGE / "distill.py").read_text()
    facts = ("level", "context", "needs_dims", "requires_pretraining", "family", "global_batch")
    pattern = r"getattr\([^)]*[\"'](" + "|".join(facts) + r")[\"']"
    assert not re.search(pattern, src)
    for cls in [DistillLoss, *LOSSES.values()]:
        for fact in ("name", *facts):
            assert hasattr(cls, fact), (cls, fact)
