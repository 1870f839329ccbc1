"""The built-in Figure 3 study on CIFAR-10H, end to end through the resumable runner.

The grid of the paper's Figure 3a: 4 deltas x 7 N x 3 seeds = 84 cells on 10^4 images,
Figure 3a's seven methods and Table 2's CB with mu = 0.25 on every cell, plus the Bayesian
model with ``--bayes``. Runs into a fresh folder, so every cell is scored; the wall time
includes compilation, Parquet parts and the final table. Target: <= 10 minutes on a CPU.

Prints one JSON line (case ``summary``). Without the counts file it says so and exits
cleanly; ``--tiny`` runs a seconds-long version on a DCIC preset instead (what CI runs).

    python benchmarks/study_fig3.py --data ../shared/data/cifar10h/cifar10h-counts.npy
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    import numpyro

    numpyro.set_host_device_count(os.cpu_count() or 1)

from cleverjax._bench import emit  # noqa: E402
from cleverjax.study import figure3_study, run_study  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10h"
DEFAULT_DATA = DEFAULT_DATA / "cifar10h-counts.npy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10H counts .npy")
    parser.add_argument("--bayes", action="store_true", help="also fit the Bayesian model")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    if args.tiny:
        truth = {"preset": "CIFAR10H", "images": 300, "annotations": 50}
        grid = dict(deltas=(0.1, 0.4), num_annotations=(1, 10), seeds=(0,))
    elif args.data.exists():
        truth = {"counts": str(args.data.resolve())}
        grid = dict(seeds=(0, 1, 2))
    else:
        print(f"# {args.data} not found: nothing to run", file=sys.stderr)
        emit(case="summary", study="fig3", skipped=f"{args.data} not found")
        return
    study = figure3_study(truth, bayes=args.bayes, **grid)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        table = run_study(study, folder, progress=sys.stderr.isatty())
        wall = time.perf_counter() - start
    closed = table[table["method"] != "Bayes"].drop_duplicates("cell")["seconds"]
    bayes = table.loc[table["method"] == "Bayes", "seconds"]
    emit(
        case="summary",
        study="fig3",
        truth=study.truths[0].name,
        images=int(study.truths[0].p.shape[0]),
        cells=int(table["cell"].nunique()),
        methods=list(study.methods),
        rows=len(table),
        wall_seconds=round(wall, 2),
        cell_seconds_median=round(float(closed.median()), 4),
        first_cell_seconds=round(float(closed.max()), 2),
        bayes_seconds_median=round(float(bayes.median()), 2) if len(bayes) else None,
    )


if __name__ == "__main__":
    main()
