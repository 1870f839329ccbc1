"""``cleverjax study run|plot`` and the built-in study behind ``cleverjax reproduce fig3``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from .. import distributed

EXAMPLE = (
    "  cleverjax study run turkey.toml --out out/turkey\n"
    "  cleverjax study plot out/turkey\n\n"
    "a minimal study file:\n"
    '  truth = { preset = "Turkey" }          # or { counts = "path/to/counts.npy" }\n'
    "  deltas = [0.1, 0.3]\n"
    "  annotations = [1, 3, 10]\n"
    "  seeds = [0, 1]\n"
    '  methods = ["SPA", "CleverLabel", "CleverLabel+GT delta", "Bayes"]\n'
    "optional: accuracy, calibration_images, calibration_annotations, one_star, mu,\n"
    "[options.CleverLabel] delta, [options.Bayes] (options of cleverjax.fit)"
)


def _run(args: argparse.Namespace) -> int:
    from .run import run_study
    from .spec import load_study

    study = load_study(args.study)
    start = time.perf_counter()
    table = run_study(study, args.out, force=args.force, progress=not args.quiet)
    if jax.process_index() != 0:
        return 0  # process 0 reports
    print(
        f"{len(table)} rows ({table['cell'].nunique()} cells x {len(study.methods)} methods) "
        f"in {time.perf_counter() - start:.1f} s -> {args.out}/results.parquet, results.csv"
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plot import plot_study, read_table

    table = read_table(args.folder)
    path = args.out or str(Path(args.folder) / "study.png")
    plot_study(table, path, exact=args.exact)
    print(f"wrote {path}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``study`` (with ``run`` and ``plot``) on the main command's subparsers."""
    study = subparsers.add_parser(
        "study",
        help="run a declarative, resumable simulation study and plot it",
        description="Run a grid of (truth, delta, N, calibration, seed) cells from a TOML "
        "study file into a folder (one row per cell, method and seed, in Parquet and CSV), "
        "resuming where an interrupted run stopped; plot a finished study.",
        epilog="example:\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = study.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    run = sub.add_parser(
        "run",
        help="run (or resume) a study",
        description="Run a study file into a folder; cells already finished there are "
        "skipped. A folder that holds a different study is refused unless --force.",
        epilog="example:\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("study", help="study file (.toml)")
    run.add_argument("--out", required=True, help="study folder (created if needed)")
    run.add_argument(
        "--force",
        action="store_true",
        help="run even if the folder holds a different study (unchanged cells are kept)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    distributed.add_arguments(run)
    run.set_defaults(run=_run)
    plot = sub.add_parser(
        "plot",
        help="KL against N per method, one panel per delta and truth",
        description="Figure-3-style plot of a finished study folder's table.",
        epilog="example:\n  cleverjax study plot out/turkey --out turkey.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("folder", help="study folder")
    plot.add_argument("--out", help="PNG to write (default: FOLDER/study.png)")
    plot.add_argument("--exact", action="store_true", help="the exact KL, not the paper's")
    plot.set_defaults(run=_plot)
    return study


def reproduce_fig3(args: argparse.Namespace, *, progress: bool = False):
    """Run ``cleverjax reproduce fig3`` as the built-in study into ``args.out``.

    The folder is the study folder, so an interrupted reproduction resumes; a rerun with
    other settings keeps the cells that did not change.

    Returns:
        ``(p, name, result)``: the ground truth, its name and a :class:`cleverjax.Figure3`.
    """
    from .builtin import figure3_result, figure3_study
    from .run import run_study

    if getattr(args, "counts", None):
        truth = {"counts": args.counts}
    else:
        truth = {"preset": args.preset, "seed": args.seed + 1, "annotations": 50}
        if args.images is not None:
            truth["images"] = args.images
    study = figure3_study(
        truth,
        deltas=args.deltas,
        num_annotations=args.annotations,
        seeds=range(args.seed, args.seed + args.seeds),
        accuracy=args.accuracy,
    )
    start = time.perf_counter()
    table = run_study(study, args.out, force=True, progress=progress)
    truth_used = study.truths[0]
    return truth_used.p, truth_used.name, figure3_result(table, time.perf_counter() - start)
