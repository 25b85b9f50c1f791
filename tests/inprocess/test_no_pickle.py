"""Checkpoints and data are loaded through safetensors and JSON only (docs/ARCHITECTURE.md §3):
unpickling a file can run any code in it. This scans the project's own code for the
ways Python and torch unpickle, so a new one cannot slip in unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("plotarmour", "services", "training")

# Modules whose loading runs code from the data.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
# Calls, matched on their dotted name's tail: torch.load / torch.jit.load unpickle by default.
UNSAFE_CALLS = {("torch", "load"), ("jit", "load"), ("serialization", "load"), ("pd", "read_pickle"),
                ("pandas", "read_pickle")}


def dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def findings(source: str, filename: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in UNSAFE_MODULES:
                out.append(f"{where}: from {node.module} import ...")
            out += [f"{where}: from {node.module} import {a.name}" for a in node.names
                    if (node.module or "").startswith("torch") and a.name == "load"]
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name[-2:] in UNSAFE_CALLS:
                out.append(f"{where}: {'.'.join(name)}(...)")
            for kw in node.keywords:  # numpy's allow_pickle, torch's weights_only=False
                value = getattr(kw.value, "value", None)
                if (kw.arg, value) in (("allow_pickle", True), ("weights_only", False)):
                    out.append(f"{where}: {kw.arg}={value}")
    return out


def test_no_unpickling_in_project_code():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20, "the scan found almost nothing: wrong root?"
    problems = [f for p in files for f in findings(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not problems, "load checkpoints with safetensors/JSON, never by unpickling:\n" + "\n".join(problems)


def test_the_scan_catches_each_form():
    bad = """
import pickle
import torch
from joblib import load
from torch import load as tload
x = torch.load("m.pt")
y = torch.jit.load("m.pt")
z = np.load("a.npy", allow_pickle=True)
w = something.load("m.pt", weights_only=False)
"""
    got = findings(bad, "bad.py")
    assert len(got) == 7, got
    assert findings("import json, safetensors.torch\nload_file('m.safetensors')\nnp.load('a.npy')\n", "ok.py") == []
