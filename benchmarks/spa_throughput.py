"""Throughput of the SPA engine against baselines measured in the same run.

Prints one JSON line per case: the JAX kernels (compile time reported apart, median of
repeated runs after a warm-up), a pure-Python per-annotation loop in the style of the
reference implementation, a vectorised NumPy per-annotation version, and NumPy's
``Generator.multinomial`` for the count form. A last line compares them with the targets.

    python benchmarks/spa_throughput.py            # full size (10^5 images x 100)
    python benchmarks/spa_throughput.py --tiny     # seconds; what CI runs
    python benchmarks/spa_throughput.py --big      # adds 10^10 annotations in one call

On a CPU the image axis is sharded over one XLA host device per core (``--cpu-devices``,
default: all cores), which is how cleverjax uses several cores; ``--cpu-devices 1`` shows
the single-device figures. The same benchmark runs as ``cleverjax bench``.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--big", action="store_true", help="add 10^10 annotations in one call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=os.cpu_count(),
        help="XLA host devices on a CPU (default: one per core)",
    )
    args = parser.parse_args()

    import numpyro

    # Must run before JAX starts its CPU backend; it has no effect on GPUs.
    numpyro.set_host_device_count(args.cpu_devices)
    from cleverjax._bench import spa_throughput

    spa_throughput(tiny=args.tiny, big=args.big, repeats=args.repeats)


if __name__ == "__main__":
    main()
