"""Every notebook runs top to bottom in smoke mode (CLEVERJAX_SMOKE=1), so none can rot."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize(
    "path",
    # Every notebook with `pytest -m slow`; the default run covers the quickstart's path
    # (simulate, CleverLabel, fit) through the README's blocks (tests/test_docs.py).
    [pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_notebook_runs_in_smoke_mode(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert code.strip()
    env = dict(os.environ, CLEVERJAX_SMOKE="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_notebooks_are_committed_with_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert any(c.outputs for c in code), f"{path.name} has no outputs"
