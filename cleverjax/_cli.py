"""The ``cleverjax`` command line: simulate, correct, fit, reproduce, bench and demo.

Conventions: a table goes to standard output when ``--out`` is omitted or ``-``; progress,
notes and warnings go to standard error. Errors in the user's input (the library's
``ValueError`` s, :class:`cleverjax.CleverjaxError`, files that cannot be read or written)
exit with status 2 and one line; anything else is a bug and keeps its traceback.

A subcommand is a function that adds its parser (see :func:`add_command`) and is listed in
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from ._errors import CleverjaxError, InputError

STDOUT = "-"
"""``--out -`` (the default for tables) writes to standard output."""

WIDENING_NOTED = 1.02
"""``fit`` mentions the widening of delta's interval (``FitResult.delta_widening``) above
this factor (below it the interval is its posterior's given the fitted prior to within
2 %)."""

USER_ERRORS = (CleverjaxError, ValueError, OSError)
"""What the command line reports as a one-line user error. The library's validation
raises ``ValueError`` (of which :class:`cleverjax.InputError` is one) naming the argument,
file, row or column; ``OSError`` covers files that cannot be read or written."""

EXAMPLES = {
    "simulate": "  cleverjax simulate --preset Turkey --delta 0.3 --annotations 10 "
    "--out turkey.csv --truth turkey-truth.npy",
    "correct": "  cleverjax correct turkey.csv --out turkey-cleverlabel.csv\n"
    "  cleverjax correct turkey.csv --rejected skipped.csv | head",
    "fit": "  cleverjax fit turkey.csv --out turkey-bayes.csv --summary turkey-fit.json",
    "reproduce": "  cleverjax reproduce fig3 --preset Turkey --out out/turkey\n"
    "  cleverjax reproduce fig3 --counts cifar10h-counts.npy --out out/cifar10h",
    "bench": "  cleverjax bench --tiny",
    "demo": "  cleverjax demo --preset Plankton --images 3000",
}


def _use_all_cpu_cores() -> None:
    """One XLA host device per core, so the image axis is sharded over all of them.

    Must run before JAX starts its CPU backend; it does not affect GPUs or TPUs.
    """
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        import numpyro

        numpyro.set_host_device_count(os.cpu_count() or 1)


def _interactive() -> bool:
    return sys.stderr.isatty()


def _note(message: str) -> None:
    """Progress and notes: standard error, so standard output stays the table."""
    print(message, file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    _note(f"warning: {message}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one line on standard error, without the source location."""
    _warn(str(message))


def _pandas_display():
    import pandas as pd

    return pd.option_context("display.float_format", "{:.4f}".format, "display.width", 160)


# ----------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------


def _read_matrix(path: str, what: str):
    """A (images, classes) array from .npy (or .csv of numbers), with errors naming it."""
    import numpy as np

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        if file.suffix == ".npy":
            array = np.load(file, allow_pickle=False)
        elif file.suffix == ".csv":
            array = np.loadtxt(file, delimiter=",", ndmin=2)
        else:
            raise InputError(
                f"{path}: expected a .npy or .csv file of {what}; got suffix {file.suffix!r}"
            )
    except (ValueError, OSError) as err:
        if str(err).startswith(str(path)):
            raise
        raise InputError(f"{path}: not a readable {what} array ({err})") from err
    if array.ndim != 2 or array.shape[1] < 2:
        raise InputError(
            f"{path}: expected a 2-D (images, classes) array with at least 2 "
            f"classes; got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{path}: expected numbers; got dtype {array.dtype}")
    bad = ~np.isfinite(array) | (array < 0)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(
            f"{path}: row {r}, column {c}: expected a finite non-negative number; got {array[r, c]}"
        )
    return array


def _read_counts_file(path: str):
    """A (images, classes) matrix of annotation counts."""
    import numpy as np

    counts = _read_matrix(path, "counts")
    frac = counts != np.round(counts)
    if frac.any():
        r, c = np.argwhere(frac)[0]
        raise InputError(
            f"{path}: row {r}, column {c}: counts must be whole numbers; got {counts[r, c]}"
        )
    return counts.astype(np.int64)


def _ground_truth(args: argparse.Namespace):
    """Label distributions from --counts, --soft or --preset, and a name for them."""
    import jax
    import numpy as np

    import cleverjax as cj

    if getattr(args, "counts", None):
        counts = _read_counts_file(args.counts)
        totals = counts.sum(axis=1, keepdims=True)
        if (totals == 0).any():
            row = int(np.argmax(totals[:, 0] == 0))
            raise InputError(
                f"{args.counts}: row {row} has no annotations; every image needs "
                f"at least one to define its ground truth"
            )
        return counts / totals, Path(args.counts).stem, None
    if getattr(args, "soft", None):
        soft = _read_matrix(args.soft, "soft labels")
        off = np.abs(soft.sum(axis=1) - 1) > 1e-4
        if off.any():
            row = int(np.argmax(off))
            raise InputError(
                f"{args.soft}: row {row} sums to {soft[row].sum():.6g}; soft labels must sum to 1"
            )
        return soft / soft.sum(axis=1, keepdims=True), Path(args.soft).stem, None
    info = cj.preset(args.preset)
    p = cj.sample_ground_truth(
        jax.random.key(args.seed + 1), info, num_images=args.images, annotations_per_image=50
    )
    return np.asarray(p), info.name, info


def _read_table(path: str, rejected: str | None = None, classes: list[str] | None = None):
    """Read a long annotation table, skipping bad rows; say how many and where they are."""
    import cleverjax as cj

    if not Path(path).exists():
        raise FileNotFoundError(f"annotation table not found: {path}")
    if classes is not None:
        from .io.tables import check_names

        check_names("--classes", classes)  # the reader's check, naming the flag
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = cj.read_annotations(path, classes=classes, on_error="skip")
    for w in caught:
        # The reader's own note on rejected rows points to a Python attribute; it is
        # restated below with the command-line option.
        if "`.rejected`" not in str(w.message):
            _warn(str(w.message))
    num = len(table.rejected)
    if num:
        first = table.rejected.iloc[0]
        if rejected:
            _write_rejected(rejected, table.rejected, path)
            where = f"listed in {rejected}"
        else:
            where = "give --rejected FILE to list them"
        _warn(
            f"{path}: skipped {num} of {table.num_rows_read} rows ({where}); first: row "
            f"{first['row']}, column {first['column']!r}: {first['reason']}"
        )
    elif rejected:
        _write_rejected(rejected, table.rejected, path)
    return table


def _write_rejected(path: str, rejected, source: str) -> None:
    """The rows not used, as CSV: file, row, column, value, reason."""
    frame = rejected[["row", "column", "value", "reason"]].copy()
    frame.insert(0, "file", source)
    _write_frame(frame, path, what="--rejected")


def _writes_files() -> bool:
    """Only process 0 writes outputs when several processes run one command."""
    import jax

    return jax.process_index() == 0


def _write_frame(frame, path: str | None, *, what: str = "--out") -> None:
    """CSV on standard output for ``-`` (or no path), else CSV or Parquet by the suffix."""
    import cleverjax as cj

    if not _writes_files():
        return
    if path in (None, STDOUT):
        frame.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
        return
    if Path(path).suffix not in (".csv", ".parquet", ".pq"):
        raise InputError(
            f"{what} {path}: expected a .csv, .parquet or .pq file (or - for standard "
            f"output); got suffix {Path(path).suffix!r}"
        )
    cj.write_table(frame, path)


def _target(path: str | None) -> str:
    return "standard output" if path in (None, STDOUT) else path


def _write_labels(path: str, labels, tasks, classes) -> None:
    """Soft labels: CSV or Parquet with a task column and one column per class."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(np.asarray(labels, np.float64), columns=list(classes))
    frame.insert(0, "task", list(tasks))
    _write_frame(frame, path)


# ----------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pandas as pd

    import cleverjax as cj

    # Checked before any simulation, so a typo fails at once.
    if not 0 < args.one_star <= 1 or not 0 <= args.delta < args.one_star:
        raise InputError(
            f"--delta and --one-star must satisfy 0 <= delta < one_star <= 1; got delta "
            f"{args.delta}, one_star {args.one_star}"
        )
    for flag, value in (
        ("--annotations", args.annotations),
        ("--calibration-images", args.calibration_images),
        ("--calibration-annotations", args.calibration_annotations),
    ):
        if value < 0:
            raise InputError(f"{flag} must be a count (0 or more); got {value}")
    p, name, info = _ground_truth(args)
    n, k = p.shape
    # Calibration images are drawn among the images: at most all of them, and none when
    # they would get no annotation.
    num_cal = min(args.calibration_images, n) if args.calibration_annotations else 0
    classes = list(info.classes) if info is not None else [str(c) for c in range(k)]
    key = jax.random.key(args.seed)
    k_prop, k_sim, k_cal = jax.random.split(key, 3)
    pj = jnp.asarray(p, jnp.result_type(float))
    rho = cj.propose(k_prop, pj, accuracy=args.accuracy)
    batch = cj.simulate_annotations(
        k_sim,
        pj,
        rho,
        num_annotations=args.annotations,
        delta=args.delta,
        one_star=args.one_star,
        return_details=True,
    )
    # With several processes the arrays are global: every process gathers, one writes.
    batch, rho = cj.distributed.gather((batch, rho))
    tasks = [f"img{i}" for i in range(n)]
    biased = cj.annotations_to_table(
        np.asarray(batch.labels),
        np.asarray(rho),
        workers=np.asarray(batch.worker),
        tasks=tasks,
        classes=classes,
    )
    frames = [biased]
    if num_cal:
        cal = cj.calibration_sample(
            k_cal, pj, num_images=num_cal, num_annotations=args.calibration_annotations
        )
        unbiased = np.zeros((n, k), np.int64)
        unbiased[np.asarray(cal.indices)] = np.asarray(cal.counts)
        frames.append(cj.counts_to_table(unbiased, tasks=tasks, classes=classes, worker_prefix="u"))
    table = pd.concat(frames, ignore_index=True)
    _write_frame(table, args.out)
    if args.truth and _writes_files():
        np.save(args.truth, p)
    _note(
        f"simulated {len(table)} annotations of {n} {name} images (delta {args.delta}, "
        f"{args.annotations} with proposals per image, {num_cal} calibration images"
        + (
            f", every image ({args.calibration_images} asked)"
            if num_cal < args.calibration_images and num_cal
            else ""
        )
        + f") -> {_target(args.out)}"
        + (f"; truth -> {args.truth}" if args.truth else "")
    )
    return 0


def _class_matrix(args, counts):
    """From --class-matrix, else --preset, else the unbiased (calibration) annotations."""
    import numpy as np

    import cleverjax as cj

    if args.class_matrix:
        return _read_matrix(args.class_matrix, "class matrix")
    if args.preset:
        info = cj.preset(args.preset)
        if info.num_classes != counts.biased.shape[1]:
            raise InputError(
                f"--preset {info.name} has {info.num_classes} classes; the table "
                f"has {counts.biased.shape[1]}"
            )
        return info.class_matrix
    calibration = counts.unbiased[counts.unbiased.sum(axis=1) > 0]
    if len(calibration) == 0:
        raise InputError(
            "no class matrix: the table has no annotations without a proposal "
            "(calibration); give --class-matrix FILE or --preset NAME"
        )
    return np.asarray(cj.estimate_class_matrix(calibration))


def _correct(args: argparse.Namespace) -> int:
    import numpy as np

    import cleverjax as cj

    table = _read_table(args.table, args.rejected, args.classes)
    counts = cj.to_counts(table)
    shown = counts.proposals >= 0
    if not shown.any():
        raise InputError(
            f"{args.table}: no annotation was made with a proposal; nothing to correct"
        )
    matrix = _class_matrix(args, counts)
    proposals = np.where(shown, counts.proposals, 0)
    labels = np.asarray(
        cj.cleverlabel(
            counts.biased,
            proposals,
            matrix,
            delta=args.delta,
            one_star=args.one_star,
            mu=args.mu,
            initial=counts.unbiased if args.include_unbiased else None,
        )
    )
    # Tasks never shown a proposal keep their plain (unbiased) soft labels.
    plain = np.asarray(cj.soft_labels(counts.unbiased))
    labels = np.where(shown[:, None], labels, plain)
    _write_labels(args.out, labels, counts.tasks, counts.classes)
    _note(
        f"CleverLabel (delta {args.delta}, 1* {args.one_star}, mu {args.mu}) on "
        f"{int(shown.sum())} tasks -> {_target(args.out)}"
    )
    return 0


def _fit(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    import cleverjax as cj

    table = _read_table(args.table, args.rejected, args.classes)
    counts = cj.to_counts(table)
    shown = counts.proposals >= 0
    if not shown.any():
        raise InputError(f"{args.table}: no annotation was made with a proposal; nothing to fit")
    key = jax.random.key(args.seed)
    variant = (
        args.rejection != "proportional"
        or args.delta_by_class
        or args.delta_by_difficulty
        or args.select_variant
    )
    if args.per_annotator and variant:
        raise InputError(
            "--per-annotator takes SPA's kernel and one delta per annotator: it cannot be "
            "combined with --rejection, --delta-by-class, --delta-by-difficulty or "
            "--select-variant"
        )
    comparison = None
    if args.per_annotator:
        res = cj.fit_annotators(
            key,
            table,
            one_star=args.one_star,
            delta_from=args.delta_from,
            progress=_interactive(),
        )
    else:
        # Every task in a table has an annotation; tasks never shown a proposal are
        # fitted under the population prior (the probe row).
        inputs = (key, counts.biased, np.where(shown, counts.proposals, 0))
        options = dict(
            unbiased_counts=counts.unbiased,
            probe=~shown,
            one_star=args.one_star,
            delta_from=args.delta_from,
            progress=_interactive(),
        )
        if args.select_variant:
            comparison = cj.compare_models(*inputs, **options)
            res = comparison.fits[comparison.best]
        else:
            res = cj.fit(
                *inputs,
                rejection=args.rejection,
                delta_by_class=args.delta_by_class,
                delta_by_difficulty=args.delta_by_difficulty,
                **options,
            )
    labels, summary = res.posterior_mean, res.to_dict()
    if comparison is not None:
        summary["model_comparison"] = comparison.to_dict()
    summary.update(tasks=len(counts.tasks), classes=list(counts.classes))
    _write_labels(args.out, labels, counts.tasks, counts.classes)
    if args.summary and _writes_files():
        Path(args.summary).write_text(json.dumps(summary, indent=2))
    lo, hi = summary["delta_interval"]
    _note(
        f"delta = {summary['delta']:.4f} ({100 * res.level:.0f}% interval {lo:.4f} to "
        f"{hi:.4f}); {len(counts.tasks)} tasks in {res.seconds:.1f} s -> {_target(args.out)}"
    )
    if res.delta_widening > WIDENING_NOTED:
        _note(
            f"delta's interval is {res.delta_widening:.2f}x as wide as its posterior given "
            f"the fitted prior: the prior moves with delta on these data (delta_widening)"
        )
    ends = summary.get("delta_by_difficulty")
    if ends is not None:
        (h_lo, h_hi), (e_lo, e_hi) = summary["delta_by_difficulty_interval"].values()
        _note(
            f"delta by difficulty: {ends['hard']:.4f} ({h_lo:.4f} to {h_hi:.4f}) on the "
            f"hardest images (p[proposal] = 0), {ends['easy']:.4f} ({e_lo:.4f} to "
            f"{e_hi:.4f}) on the easiest (p[proposal] = 1)"
        )
    if comparison is not None:
        scores = ", ".join(
            f"{c} {e:.1f}" for c, e in sorted(comparison.elpd.items(), key=lambda x: -x[1])
        )
        _note(
            f"model variant: {comparison.best} (held-out log predictive density of "
            f"{comparison.images} calibration images: {scores})"
        )
    for check in res.checks:
        verdict = "skipped" if check.p_value != check.p_value else (
            "passed" if check.passed else "FAILED"
        )  # fmt: skip
        _note(f"model check {check.name}: {verdict} (p = {check.p_value:.3g}). {check.verdict}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import cleverjax as cj

    from .study.cli import reproduce_fig3

    p, name, result = reproduce_fig3(args, progress=_interactive())  # a resumable study
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _note(
        f"reproduce fig3 on {name}: {p.shape[0]} images, {p.shape[1]} classes, deltas "
        f"{args.deltas}, N {args.annotations}, {args.seeds} seed(s)"
    )
    result.table.to_csv(out / "fig3_table.csv", index=False)
    result.medians.to_csv(out / "fig3_medians.csv")
    result.ablation.to_csv(out / "table2_ablation.csv")
    result.budget.to_csv(out / "fig3_budget.csv", index=False)
    findings = cj.check_findings(result)
    summary = {
        "dataset": name,
        "images": int(p.shape[0]),
        "classes": int(p.shape[1]),
        "accuracy": args.accuracy,
        "deltas": list(args.deltas),
        "num_annotations": list(args.annotations),
        "seeds": args.seeds,
        "seconds": result.seconds,
        "medians": {
            m: {str(n): float(v) for n, v in result.medians[m].items()}
            for m in result.medians.columns
        },
        "ablation": {
            m: {str(n): float(v) for n, v in result.ablation[m].items()}
            for m in result.ablation.columns
        },
        "findings": [f._asdict() for f in findings],
    }
    (out / "fig3.json").write_text(json.dumps(summary, indent=2))
    cj.plot_figure3(result, out / "fig3.png", title=f"{name}: SPA and CleverLabel")
    with _pandas_display():
        print(result.medians.to_string())
    for f in findings:
        print(f"[{'holds' if f.holds else 'does not hold'}] {f.claim}: {f.evidence}")
    _note(f"{result.seconds:.1f} s; wrote {out}/fig3.png, fig3.json and CSV tables")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ._bench import spa_throughput

    spa_throughput(tiny=args.tiny, big=args.big, repeats=args.repeats)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    run_demo(
        preset=args.preset,
        images=args.images,
        delta=args.delta,
        annotations=args.annotations,
        accuracy=args.accuracy,
        seed=args.seed,
        plot=args.plot,
        progress=_interactive(),
    )
    return 0


# ----------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------


def _help_with_default(action: argparse.Action) -> str:
    """An option's help with its default. Required options and positionals have none;
    an option whose default is ``None`` says in its help what happens without it."""
    text = action.help or ""
    if action.option_strings and action.required:
        return f"{text} (required)"
    if (
        not action.option_strings
        or action.default in (None, argparse.SUPPRESS)
        or "default" in text
    ):
        return text
    if action.default is False and action.nargs == 0:
        return f"{text} (default: off)"
    default = action.default
    if isinstance(default, (list, tuple)):
        default = " ".join(str(v) for v in default)
    return f"{text} (default: {str(default).replace('%', '%%')})"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's help shows its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return _help_with_default(action)


def add_command(
    sub, name: str, *, help: str, description: str, example: str
) -> argparse.ArgumentParser:
    """Add a subcommand's parser with the shared help conventions (an example, defaults)."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="example:\n" + example,
        formatter_class=HelpFormatter,
    )


def _processes(parser: argparse.ArgumentParser) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id``: run on several processes."""
    from . import distributed

    distributed.add_arguments(parser)


def _out_table(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--out",
        default=STDOUT,
        help=f"{what} to write (.csv/.parquet); - writes CSV to standard output",
    )


def _table_in(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", help="annotation table (.csv/.parquet)")
    parser.add_argument(
        "--rejected",
        metavar="FILE",
        help="write the rows that were skipped (file, row, column, value, reason) to "
        "this CSV (default: only counted in a warning)",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="the class names in index order; a label outside them is then a skipped row "
        "(default: the distinct labels and proposals of the table)",
    )


def _truth_source(parser: argparse.ArgumentParser, *, soft: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="ground truth drawn like a DCIC dataset, e.g. Turkey")
    source.add_argument("--counts", help="ground truth: (images, classes) counts, .npy or .csv")
    if soft:
        source.add_argument("--soft", help="ground truth: (images, classes) soft labels")
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="images for --preset (default: the dataset's size)",
    )


def _add_simulate(sub) -> None:
    sim = add_command(
        sub,
        "simulate",
        help="simulate proposal-biased annotations (SPA) into a table",
        description="Draw proposals and SPA annotations for a ground truth and write the "
        "long annotation table (task, worker, label, proposal), with optional calibration "
        "annotations made without proposals.",
        example=EXAMPLES["simulate"],
    )
    _truth_source(sim, soft=True)
    _out_table(sim, "annotation table")
    sim.add_argument("--truth", help="also save the ground truth (.npy) (default: not saved)")
    sim.add_argument("--delta", type=float, required=True, help="acceptance offset delta")
    sim.add_argument("--one-star", type=float, default=0.99, dest="one_star", help="1*")
    sim.add_argument("--annotations", type=int, default=10, help="annotations per image")
    sim.add_argument("--accuracy", type=float, default=0.9, help="proposer accuracy")
    sim.add_argument(
        "--calibration-images",
        type=int,
        default=100,
        dest="calibration_images",
        help="images also annotated without proposal",
    )
    sim.add_argument(
        "--calibration-annotations",
        type=int,
        default=10,
        dest="calibration_annotations",
        help="annotations without proposal per calibration image",
    )
    sim.add_argument("--seed", type=int, default=0, help="random seed")
    _processes(sim)
    sim.set_defaults(run=_simulate)


def _add_correct(sub) -> None:
    cor = add_command(
        sub,
        "correct",
        help="repair a table's labels with CleverLabel",
        description="Bias correction (BC) and class blending (CB) of the annotations made "
        "with proposals. The class matrix comes from --class-matrix, --preset, or the "
        "table's annotations made without a proposal.",
        example=EXAMPLES["correct"],
    )
    _out_table(cor, "soft labels")
    _table_in(cor)
    cor.add_argument("--delta", type=float, default=0.1, help="delta for bias correction")
    cor.add_argument("--one-star", type=float, default=0.99, dest="one_star", help="1*")
    cor.add_argument("--mu", type=float, default=0.75, help="class-blending weight")
    cor.add_argument(
        "--class-matrix",
        dest="class_matrix",
        help="(classes, classes) .npy/.csv (default: from --preset or the calibration annotations)",
    )
    cor.add_argument("--preset", help="use this DCIC preset's class matrix (default: not used)")
    cor.add_argument(
        "--include-unbiased",
        action="store_true",
        dest="include_unbiased",
        help="blend in annotations made without proposals (initial labels)",
    )
    cor.set_defaults(run=_correct)


def _add_fit(sub) -> None:
    fit = add_command(
        sub,
        "fit",
        help="infer delta and repaired labels with the Bayesian model",
        description="Fit the Bayesian SPA model (exact collapsed likelihood, SVI with "
        "optax) to a table: delta with a credible interval and posterior-mean labels.",
        example=EXAMPLES["fit"],
    )
    _out_table(fit, "soft labels")
    _table_in(fit)
    fit.add_argument(
        "--summary",
        help="JSON summary (delta, interval, checks) to write (default: not written)",
    )
    fit.add_argument("--one-star", type=float, default=0.99, dest="one_star", help="1*")
    fit.add_argument(
        "--delta-from",
        default="calibration",
        choices=["calibration", "all"],
        dest="delta_from",
        help="which images inform delta (see cleverjax.fit)",
    )
    fit.add_argument(
        "--rejection",
        default="proportional",
        choices=["proportional", "uniform", "mixed"],
        help="which class a rejected proposal's annotation picks: in proportion to p "
        "(SPA), uniformly, or a learned per-image mixture of the two",
    )
    fit.add_argument(
        "--delta-by-class",
        action="store_true",
        dest="delta_by_class",
        help="one delta per proposed class, shrunk toward each other (hierarchical)",
    )
    fit.add_argument(
        "--delta-by-difficulty",
        action="store_true",
        dest="delta_by_difficulty",
        help="delta depends on the image's difficulty, linearly in p[proposal]: "
        "delta(t) = hard (1 - t) + easy t",
    )
    fit.add_argument(
        "--select-variant",
        action="store_true",
        dest="select_variant",
        help="fit SPA and its robust variants (uniform and mixed rejection, delta by "
        "difficulty, delta by class) and keep the one that best predicts held-out "
        "calibration images (cleverjax.compare_models: 30 fits)",
    )
    fit.add_argument(
        "--per-annotator",
        action="store_true",
        dest="per_annotator",
        help="one delta per annotator (hierarchical)",
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed")
    _processes(fit)
    fit.set_defaults(run=_fit)


def _add_reproduce(sub) -> None:
    rep = add_command(
        sub,
        "reproduce",
        help="reproduce a figure of the CleverLabel paper",
        description="Reproduce Figure 3a (KL of GT, GT+CB, SPA, SPA+CB, SPA+BC, "
        "CleverLabel and CleverLabel+GT delta against annotations per image), Table 2's "
        "label ablation and budget curves. Writes CSV and JSON tables and a PNG; prints "
        "the medians and the paper's findings.",
        example=EXAMPLES["reproduce"],
    )
    rep.add_argument("figure", choices=["fig3"], help="which figure")
    _truth_source(rep, soft=False)
    rep.add_argument("--out", required=True, help="output folder")
    rep.add_argument("--accuracy", type=float, default=0.9, help="proposer accuracy")
    rep.add_argument(
        "--deltas", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.6], help="true deltas"
    )
    rep.add_argument(
        "--annotations",
        type=int,
        nargs="+",
        default=[1, 3, 5, 10, 20, 50, 100],
        help="annotations per image",
    )
    rep.add_argument("--seeds", type=int, default=1, help="replicates")
    rep.add_argument("--seed", type=int, default=0, help="random seed")
    _processes(rep)
    rep.set_defaults(run=_reproduce)


def _add_bench(sub) -> None:
    ben = add_command(
        sub,
        "bench",
        help="time the SPA engine against its baselines",
        description="Throughput of the SPA kernels and, in the same run, a pure-Python "
        "loop, a vectorised NumPy version and NumPy's multinomial; one JSON line per case.",
        example=EXAMPLES["bench"],
    )
    ben.add_argument("--tiny", action="store_true", help="tiny sizes (seconds)")
    ben.add_argument("--big", action="store_true", help="add 10^10 annotations in one call")
    ben.add_argument("--repeats", type=int, default=7, help="timed runs per case")
    ben.set_defaults(run=_bench)


def _add_demo(sub) -> None:
    demo = add_command(
        sub,
        "demo",
        help="the main job on a built-in DCIC-like dataset",
        description="Simulate a DCIC preset with SPA (checking the share of annotations on "
        "the proposal against the closed form for several deltas and annotation counts, "
        "and measuring the engine's speed), repair it with CleverLabel and with the "
        "Bayesian model, print one table (KL of each method against the known truth, "
        "delta estimated against true, time taken) and write a plot.",
        example=EXAMPLES["demo"],
    )
    demo.add_argument("--preset", default="CIFAR10H", help="DCIC preset")
    demo.add_argument("--images", type=int, default=5000, help="images to simulate")
    demo.add_argument("--delta", type=float, default=0.3, help="true acceptance offset")
    demo.add_argument("--annotations", type=int, default=10, help="annotations per image")
    demo.add_argument("--accuracy", type=float, default=0.9, help="proposer accuracy")
    demo.add_argument("--plot", default="cleverjax-demo.png", help="plot to write (PNG)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(run=_demo)


def _add_study(sub) -> None:
    from .study.cli import add_parser

    add_parser(sub)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_simulate,
    _add_correct,
    _add_fit,
    _add_reproduce,
    _add_bench,
    _add_demo,
    _add_study,
]
"""Each function adds one subcommand (with :func:`add_command`) and sets ``run``, the
function that carries it out and returns the exit status."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cleverjax",
        description="Simulate, correct and infer the default effect of proposal-guided "
        "annotation (SPA and CleverLabel) with JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _quiet_stdout() -> None:
    """After the reader of standard output has gone (``| head``), send the rest, and
    Python's final flush, to the null device."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # standard output without a file descriptor
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _use_all_cpu_cores()
    from . import distributed  # after the CPU device count is set

    user_errors = (*USER_ERRORS, distributed.DistributedError)
    try:
        if hasattr(args, "coordinator"):
            distributed.initialize_from_args(args)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.run(args)
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # as a shell reports a process ended by SIGPIPE
    except user_errors as err:
        if os.environ.get("CLEVERJAX_DEBUG"):
            raise
        print(f"cleverjax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
