"""`import graphkd` / `import recsys` stay light: no DGL, RecBole, RDKit or matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("dgl", "recbole", "rdkit", "matplotlib")


def loaded_after(statement: str) -> list[str]:
    """Top-level modules among HEAVY present in sys.modules after ``statement`` (fresh process)."""
    code = (
        f"import sys, json\n{statement}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_graphkd_core_imports_are_light():
    stmt = ("import graphkd, graphkd.losses, graphkd.graphs, graphkd.ops, graphkd.kernels, "
            "graphkd.divergences")
    assert loaded_after(stmt) == []


def test_recsys_import_is_light():
    assert loaded_after("import recsys") == []


def test_probe_detects_a_heavy_import():
    # the probe itself must be able to fail: importing a heavy module directly is seen
    pytest.importorskip("matplotlib")
    assert loaded_after("import matplotlib") == ["matplotlib"]
