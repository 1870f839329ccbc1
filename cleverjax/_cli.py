"""The ``cleverjax`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _use_all_cpu_cores() -> None:
    """One XLA host device per core, so the image axis is sharded over all of them.

    Must run before JAX starts its CPU backend; it does not affect GPUs or TPUs.
    """
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        import numpyro

        numpyro.set_host_device_count(os.cpu_count() or 1)


def _demo(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pandas as pd

    import cleverjax as cj

    info = cj.preset(args.preset)
    key = jax.random.key(args.seed)
    k_truth, k_prop, k_sim = jax.random.split(key, 3)
    p = cj.sample_ground_truth(k_truth, info, num_images=args.images)
    proposals = cj.propose(k_prop, p, accuracy=args.accuracy)
    n = p.shape[0]
    print(
        f"cleverjax demo: {info.name}-like data, {n} images, {info.num_classes} classes, "
        f"proposer accuracy {args.accuracy}, devices: {len(jax.devices())} x "
        f"{jax.devices()[0].platform}"
    )
    rows = []
    for i, delta in enumerate(args.deltas):
        expected = float(
            jnp.mean(
                delta + (args.one_star - delta) * jnp.take_along_axis(p, proposals[:, None], axis=1)
            )
        )
        for j, num in enumerate(args.annotations):
            sub = jax.random.fold_in(k_sim, i * 1000 + j)
            t0 = time.perf_counter()
            counts = jax.block_until_ready(
                cj.simulate_counts(
                    sub, p, proposals, num_annotations=num, delta=delta, one_star=args.one_star
                )
            )
            wall = time.perf_counter() - t0
            on_proposal = int(jnp.sum(jnp.take_along_axis(counts, proposals[:, None], axis=1)))
            total = int(np.asarray(counts).sum())
            rows.append(
                {
                    "delta": delta,
                    "N": num,
                    "images": n,
                    "annotations": total,
                    "acceptance (measured)": on_proposal / max(total, 1),
                    "acceptance (expected)": expected,
                    "annotations/s": total / wall,
                }
            )
    table = pd.DataFrame(rows)
    with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
        print(table.to_string(index=False))
    return 0


def _load_ground_truth(args: argparse.Namespace):
    """Ground-truth label distributions from --counts (a .npy counts matrix) or --preset."""
    import jax
    import numpy as np

    import cleverjax as cj

    if args.counts is not None:
        counts = _read_counts_file(args.counts)
        totals = counts.sum(axis=1, keepdims=True)
        if (totals == 0).any():
            row = int(np.argmax(totals[:, 0] == 0))
            raise ValueError(
                f"{args.counts}: row {row} has no annotations; every image needs "
                f"at least one to define its ground truth"
            )
        return counts / totals, Path(args.counts).stem
    info = cj.preset(args.preset)
    p = cj.sample_ground_truth(jax.random.key(args.seed + 1), info, num_images=args.images)
    return np.asarray(p), info.name


def _read_counts_file(path: str):
    """A (images, classes) matrix of annotation counts saved with numpy.save."""
    import numpy as np

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"counts file not found: {path}")
    if file.suffix != ".npy":
        raise ValueError(
            f"{path}: expected a .npy file of (images, classes) counts; got suffix {file.suffix!r}"
        )
    try:
        counts = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({err})") from err
    if counts.ndim != 2 or counts.shape[1] < 2:
        raise ValueError(
            f"{path}: expected a 2-D (images, classes) array with at least 2 "
            f"classes; got shape {counts.shape}"
        )
    if not np.issubdtype(counts.dtype, np.number):
        raise ValueError(f"{path}: expected numeric counts; got dtype {counts.dtype}")
    bad = ~np.isfinite(counts) | (counts < 0) | (counts != np.round(counts))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"{path}: row {r}, column {c}: counts must be non-negative whole "
            f"numbers; got {counts[r, c]}"
        )
    return counts.astype(np.int64)


def _reproduce(args: argparse.Namespace) -> int:
    import json

    import jax

    import cleverjax as cj

    if args.figure != "fig3":
        raise ValueError(f"unknown figure {args.figure!r}; available: fig3")
    p, name = _load_ground_truth(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"reproduce fig3 on {name}: {p.shape[0]} images, {p.shape[1]} classes, deltas "
        f"{args.deltas}, N {args.annotations}, {args.seeds} seed(s)"
    )
    result = cj.figure3(
        jax.random.key(args.seed),
        p,
        accuracy=args.accuracy,
        deltas=args.deltas,
        num_annotations=args.annotations,
        num_seeds=args.seeds,
        progress=_interactive(),
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
    print(f"{result.seconds:.1f} s; wrote {out}/fig3.png, fig3.json and CSV tables")
    return 0


def _interactive() -> bool:
    return sys.stderr.isatty()


def _pandas_display():
    import pandas as pd

    return pd.option_context("display.float_format", "{:.4f}".format, "display.width", 160)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cleverjax",
        description="Simulate, correct and infer the default effect of proposal-guided "
        "annotation (SPA and CleverLabel) with JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the main job on a built-in DCIC-like dataset",
        description="Simulate a DCIC preset with SPA for several deltas and annotation "
        "counts and print measured against expected acceptance.",
        epilog="example: cleverjax demo --preset Plankton --images 5000",
    )
    demo.add_argument("--preset", default="CIFAR10H", help="DCIC preset (default: CIFAR10H)")
    demo.add_argument("--images", type=int, default=10000, help="images to simulate")
    demo.add_argument("--accuracy", type=float, default=0.9, help="proposer accuracy")
    demo.add_argument("--deltas", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.6])
    demo.add_argument("--annotations", type=int, nargs="+", default=[1, 10, 100])
    demo.add_argument("--one-star", type=float, default=0.99, dest="one_star")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    rep = sub.add_parser(
        "reproduce",
        help="reproduce a figure of the CleverLabel paper",
        description="Reproduce Figure 3a (KL of GT, GT+CB, SPA, SPA+CB, SPA+BC, CleverLabel "
        "and CleverLabel+GT delta against annotations per image), Table 2's "
        "label ablation and budget curves. Writes CSV and JSON tables and a PNG.",
        epilog="examples:\n  cleverjax reproduce fig3 --preset Turkey --out out/turkey\n"
        "  cleverjax reproduce fig3 --counts cifar10h-counts.npy --out out/cifar10h",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("figure", choices=["fig3"], help="which figure")
    source = rep.add_mutually_exclusive_group(required=True)
    source.add_argument("--counts", help="ground truth: .npy (images, classes) counts matrix")
    source.add_argument("--preset", help="ground truth: a DCIC preset, e.g. CIFAR10H")
    rep.add_argument("--out", required=True, help="output folder")
    rep.add_argument("--images", type=int, default=None, help="images for --preset")
    rep.add_argument("--accuracy", type=float, default=0.9, help="proposer accuracy")
    rep.add_argument("--deltas", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.6])
    rep.add_argument("--annotations", type=int, nargs="+", default=[1, 3, 5, 10, 20, 50, 100])
    rep.add_argument("--seeds", type=int, default=1, help="replicates")
    rep.add_argument("--seed", type=int, default=0, help="random seed")
    rep.set_defaults(run=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _use_all_cpu_cores()
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"cleverjax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
