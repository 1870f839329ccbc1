"""The ``cleverjax`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time


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
