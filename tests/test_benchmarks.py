"""Each benchmark script runs once at tiny size and prints valid JSON lines."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
QUICK: set[str] = set()
"""Scripts cheap enough for the default run (none: each compiles in fresh processes, and
the fitting ones take minutes); all run with ``pytest -m slow``."""
EXPECTED_KEYS = {
    "coverage.py": {
        "cell": {
            "dataset", "num_annotations", "delta", "calibration_images", "replicates",
            "coverage", "coverage_ci95", "nominal_in_ci", "in_target_band", "beyond_3sd_rate",
            "beyond_3sd_allowance", "beyond_3sd_p_value", "z_mean", "z_sd", "delta_rmse",
            "fit_s_median",
        },
        "summary": {"cells", "cells_in_target_band", "worst_cell"},
    },
    "fit_scale.py": {"weights": {"n100_recurrence_s", "n100_windowed_sum_s", "n100_speedup"}},
}  # fmt: skip
"""Keys that a script's lines of a given case must carry, where a test relies on them."""


@pytest.mark.parametrize(
    "script",
    [s if s.name in QUICK else pytest.param(s, marks=pytest.mark.slow) for s in SCRIPTS],
    ids=lambda p: p.name,
)
def test_benchmark_runs_tiny(script):
    proc = subprocess.run(
        [sys.executable, str(script), "--tiny"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines and all("case" in line for line in lines)
    assert lines[-1]["case"] == "summary"
    for case, keys in EXPECTED_KEYS.get(script.name, {}).items():
        found = [line for line in lines if line["case"] == case]
        assert found, f"no {case!r} line"
        for line in found:
            assert keys <= line.keys(), sorted(keys - line.keys())


def test_peak_memory_is_in_bytes_on_every_platform(monkeypatch):
    from cleverjax import _bench

    resource = pytest.importorskip("resource")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    monkeypatch.setattr(sys, "platform", "linux")
    linux = _bench.peak_memory_bytes()
    assert linux >= peak * 1024  # KiB there; the peak can only grow
    monkeypatch.setattr(sys, "platform", "darwin")
    darwin = _bench.peak_memory_bytes()
    assert peak <= darwin < linux  # bytes there
    # Where `resource` does not exist (Windows), the module imports and the peak is
    # unknown, not an error.
    monkeypatch.setitem(sys.modules, "resource", None)
    importlib.reload(_bench)
    assert _bench.peak_memory_bytes() is None
