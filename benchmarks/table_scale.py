"""Long tables to counts at scale: ``read_counts`` on a Parquet folder, against the in-memory
``to_counts(read_annotations(...))`` at a size where that fits.

The data set is written to a temporary folder in chunks with pyarrow (never held whole):
``--annotations`` rows, ``--per-task`` annotations per task (so annotations / per-task
tasks), ``--classes`` classes, each task shown one proposal; columns ``task`` (text, the
task number), ``worker`` (text, one of 1000, distinct within a task), ``label`` and
``proposal`` (class names ``c0``, ``c1``, ...), in files of ``--rows-per-file`` rows.
Each reader runs in a fresh Python process that reports its wall time and peak resident
memory (``ru_maxrss``), and the memory after ``import cleverjax`` (JAX included), so the
reader's own share is the difference.

    python benchmarks/table_scale.py --annotations 100000000          # the target case
    python benchmarks/table_scale.py --tiny                           # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGET_RATE = 5e6  # annotations per second
TARGET_PEAK_GIB = 2.0
NUM_WORKERS = 1000

_MEASURE = r"""
import json, resource, sys, time, warnings
import cleverjax as cj
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
path, how, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
if how == "read_counts":
    out = cj.read_counts(path, batch_size=batch)
    counts, rows = out.counts, out.num_rows_read
else:
    table = cj.read_annotations(path)
    counts, rows = cj.to_counts(table), table.num_rows_read
wall = time.perf_counter() - t0
print(json.dumps(dict(
    wall_s=wall,
    rows=rows,
    tasks=len(counts.tasks),
    total=int(counts.biased.sum(dtype="int64") + counts.unbiased.sum(dtype="int64")),
    peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    import_rss_gib=rss0,
)))
"""


def emit(**fields) -> dict:
    print(json.dumps(fields), flush=True)
    return fields


def write_dataset(folder: Path, annotations: int, per_task: int, k: int, rows_per_file: int):
    """Write the table in chunks of whole tasks; return the seconds taken."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    classes = pa.array([f"c{i}" for i in range(k)])
    tasks_per_chunk = max(1, min(rows_per_file, 1_000_000) // per_task)
    num_tasks = annotations // per_task
    folder.mkdir(parents=True, exist_ok=True)
    writer, written, part = None, 0, 0
    for first in range(0, num_tasks, tasks_per_chunk):
        n = min(tasks_per_chunk, num_tasks - first)
        task = np.repeat(np.arange(first, first + n, dtype=np.int64), per_task)
        slot = np.tile(np.arange(per_task, dtype=np.int64), n)
        proposal = np.repeat(rng.integers(0, k, n), per_task)
        accept = rng.random(n * per_task) < 0.5
        label = np.where(accept, proposal, rng.integers(0, k, n * per_task))
        batch = pa.table(
            {
                "task": pa.array(task).cast(pa.string()),
                "worker": pa.array((task + 97 * slot) % NUM_WORKERS).cast(pa.string()),
                "label": classes.take(pa.array(label)),
                "proposal": classes.take(pa.array(proposal)),
            }
        )
        if writer is None or written >= rows_per_file:
            if writer is not None:
                writer.close()
            writer = pq.ParquetWriter(folder / f"part-{part:05d}.parquet", batch.schema)
            part, written = part + 1, 0
        writer.write_table(batch, row_group_size=1 << 20)
        written += batch.num_rows
    if writer is not None:
        writer.close()
    return time.perf_counter() - t0


def measure(path: Path, how: str, batch_size: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), how, str(batch_size)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{how} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def case(folder: Path, how: str, annotations: int, batch_size: int, label: str) -> dict:
    m = measure(folder, how, batch_size)
    assert m["rows"] == m["total"] == annotations, m
    return emit(
        case=label,
        reader=how,
        annotations=annotations,
        tasks=m["tasks"],
        wall_s=round(m["wall_s"], 3),
        annotations_per_s=annotations / m["wall_s"],
        peak_rss_gib=round(m["peak_rss_gib"], 3),
        import_rss_gib=round(m["import_rss_gib"], 3),
        reader_rss_gib=round(m["peak_rss_gib"] - m["import_rss_gib"], 3),
        device="cpu",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=int, default=100_000_000)
    parser.add_argument("--baseline-annotations", type=int, default=1_000_000, dest="baseline")
    parser.add_argument("--per-task", type=int, default=10, dest="per_task")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rows-per-file", type=int, default=10_000_000, dest="rows_per_file")
    parser.add_argument("--batch-size", type=int, default=1 << 20, dest="batch_size")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args()
    if args.tiny:
        args.annotations, args.baseline, args.rows_per_file = 20_000, 20_000, 7_000
    with tempfile.TemporaryDirectory() as d:
        small = Path(d) / "small"  # one file: read_annotations reads files, not folders
        write_dataset(small, args.baseline, args.per_task, args.classes, args.baseline)
        small = small / "part-00000.parquet"
        base = case(small, "read_annotations", args.baseline, args.batch_size, "baseline")
        same = case(small, "read_counts", args.baseline, args.batch_size, "read_counts_small")
        big = Path(d) / "big"
        write_s = write_dataset(
            big, args.annotations, args.per_task, args.classes, args.rows_per_file
        )
        emit(case="write", annotations=args.annotations, wall_s=round(write_s, 3), device="cpu")
        run = case(big, "read_counts", args.annotations, args.batch_size, "read_counts")
    emit(
        case="summary",
        annotations=args.annotations,
        annotations_per_s=run["annotations_per_s"],
        peak_rss_gib=run["peak_rss_gib"],
        speedup_vs_baseline_at_small=same["annotations_per_s"] / base["annotations_per_s"],
        target_met=(
            run["annotations_per_s"] >= TARGET_RATE and run["peak_rss_gib"] <= TARGET_PEAK_GIB
            if args.annotations >= 10**8
            else None
        ),
        device="cpu",
    )


if __name__ == "__main__":
    main()
