"""Each benchmark script runs once at tiny size and prints valid JSON lines."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_runs_tiny(script):
    proc = subprocess.run(
        [sys.executable, str(script), "--tiny"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines and all("case" in line for line in lines)
    assert lines[-1]["case"] == "summary"
