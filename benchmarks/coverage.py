"""Coverage of delta's credible interval: simulation-based calibration of ``cleverjax.fit``.

Many simulated campaigns with a known delta, each fitted as a user would fit one, and the
share of them whose 90 % interval contains the true delta. Set-up per replicate:

* truth: ``--images`` label distributions, fresh every replicate: a random subset of the
  CIFAR-10H soft labels (``--data``; without the file, the CIFAR10H preset instead, said
  so on stderr), or drawn from a DCIC preset with
  ``cleverjax.sample_ground_truth(..., annotations_per_image=50)`` (e.g. ``Turkey``,
  ``MiceBone``, ``Plankton``, ``Treeversity#6``), or ``diverse``: each row of p drawn
  from Dirichlet(0.2) over 10 classes (nearly every image distinct, the hard case of
  ``benchmarks/fit_scale.py``);
* proposals from a proposer of accuracy ``--accuracy`` (0.85), uniform mistakes;
* every image with N biased annotations (SPA, the given delta, 1* = 0.99);
* ``--calibration`` random images also with 10 unbiased annotations each;
* ``cleverjax.fit`` with its defaults (delta from the calibration images only, 1* fixed
  at 0.99), except no predictive check and no model checks (``num_ppc_replicates=0,
  check_model=False``), which do not touch delta.

Grid: dataset x N (``--annotations``) x delta (``--deltas``) x calibration images
(``--calibration``), ``--replicates`` campaigns per cell. Every replicate has the same
number of images, so that replicates share compiled programs (the fit pads its distinct
images to bucketed sizes; a replicate that lands in another bucket compiles once more).

Per cell (one JSON line): coverage of the 90 % interval with its 95 % Clopper-Pearson
interval and whether 0.90 lies inside it; whether coverage lies in the target band
[0.85, 0.95]; z = (posterior mean - truth) / posterior sd (sd of ``delta_samples``): the
share of replicates with |z| > 3 against the Gaussian allowance 2 (1 - Phi(3)) = 0.0027
(one-sided binomial p-value of the observed count), mean and sd of z (mean far from 0:
a biased estimate; sd above 1: intervals too narrow), delta's bias and RMSE, the mean
posterior sd next to the sd of the estimates over replicates, the fit's
``delta_widening`` (mean and range; see ``cleverjax.bayes.fitting.feedback_widening``),
and the median fit time
(the first fit of each shape includes compilation; the median does not see it). Then a
summary line: cells in the target band, and the worst cell (coverage furthest from 0.90).

Measured (CPU, CIFAR-10H, 2000 images; raw lines in
``benchmarks/results/coverage_cpu.jsonl``, tables in ``benchmarks/RESULTS.md``), with
Jeffreys' prior (the default): of the cells with 20 replicates (N in {1, 3, 10, 50} x
delta in {0.1, 0.3, 0.5} with 100 calibration images, N = 10 with 50 or 400, and the
Turkey and MiceBone presets at N = 10, delta = 0.3), 19 of 20 lie inside the band
[0.85, 0.95]. Below it: N = 10, delta = 0.3 with 50 calibration images, rerun with 100
replicates: 83 of 100 (Clopper-Pearson 0.74-0.90), near misses (no |z| above
2.44; sd of z 1.10): there delta's information comes from the few calibration images
whose proposal nobody chose, binomial counts whose extremes the interval, exact given
the model, does not always cover. At N = 1 and 3 with delta = 0.1 the estimate is pulled
inwards (mean z +0.6), as any proper prior pulls so weak a likelihood.

DCIC presets (30 campaigns per cell, N in {1, 3, 10, 50} x delta in {0.1, 0.3, 0.5}, 100
calibration images, ``--seed 3``), with the fit's widening for the prior's response to
delta (``FitResult.delta_widening``): Benthic 330/360, Plankton 329/360, Treeversity#6
326/360 (sd of z 1.04; 305/360 and 1.19 without the widening); every cell holds 0.90
inside its Clopper-Pearson interval.

Needs scipy (a test extra) for the binomial intervals. ``--tiny`` is a seconds-long smoke
run (one small cell on a preset, 2 replicates), what CI runs.

    nice -n 19 python benchmarks/coverage.py --datasets cifar10h --annotations 1 10 50 \\
        --deltas 0.1 0.3 0.5 --calibration 100 --replicates 20 --images 2000
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__":
    import numpyro

    numpyro.set_host_device_count(os.cpu_count() or 1)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import cleverjax as cj  # noqa: E402
from cleverjax._bench import emit  # noqa: E402

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10h" / "cifar10h-counts.npy"
)
LEVEL = 0.9
BAND = (0.85, 0.95)
GAUSS_3SD = 2 * stats.norm.sf(3.0)  # 0.0027: P(|z| > 3) for a calibrated Gaussian posterior
UNBIASED_PER_IMAGE = 10
PRESET_ANNOTATIONS = 50  # annotations behind a preset's empirical soft labels
DIVERSE_CLASSES, DIVERSE_CONCENTRATION = 10, 0.2  # the "diverse" data of fit_scale.py
WORST_KEYS = (
    "dataset", "num_annotations", "delta", "calibration_images", "coverage", "coverage_ci95",
    "z_mean", "z_sd",
)  # fmt: skip

Truth = Callable[[jax.Array], np.ndarray]
"""Draws ``(images, classes)`` ground-truth label distributions from a key."""


def truth_source(name: str, data: Path, images: int) -> tuple[Truth, str, str]:
    """A sampler of ground truth for one data set, its label in the output (the preset's
    name when the CIFAR-10H file is absent) and its description."""
    if name.lower() == "diverse":

        def draw(key: jax.Array) -> np.ndarray:
            alpha = jnp.full((DIVERSE_CLASSES,), DIVERSE_CONCENTRATION)
            return np.asarray(jax.random.dirichlet(key, alpha, (images,)), np.float64)

        return (
            draw,
            "diverse",
            f"diverse: Dirichlet({DIVERSE_CONCENTRATION}) over {DIVERSE_CLASSES} classes",
        )
    if name.lower() == "cifar10h":
        if data.exists():
            counts = np.load(data).astype(np.float64)
            soft = counts / counts.sum(axis=1, keepdims=True)

            def draw(key: jax.Array) -> np.ndarray:
                rng = cj.bayes.data.numpy_rng(key)
                return soft[rng.choice(len(soft), images, replace=len(soft) < images)]

            return draw, "cifar10h", f"CIFAR-10H ({data.name}, {len(soft)} images)"
        print(f"# {data} not found: using the CIFAR10H preset instead", file=sys.stderr)
        name = "CIFAR10H"
    info = cj.preset(name)

    def draw(key: jax.Array) -> np.ndarray:
        p = cj.sample_ground_truth(
            key, info, num_images=images, annotations_per_image=PRESET_ANNOTATIONS
        )
        return np.asarray(p, np.float64)

    return draw, info.name, f"{info.name} preset ({PRESET_ANNOTATIONS} annotations per soft label)"


def simulate_campaign(
    key: jax.Array,
    truth: Truth,
    *,
    delta: float,
    num_annotations: int,
    num_calibration: int,
    accuracy: float,
) -> tuple:
    """Fresh images, proposals, biased counts and a calibration set; returns ``(biased,
    proposals, unbiased, key for the fit)``."""
    k_truth, k_prop, k_bias, k_cal, k_fit = jax.random.split(key, 5)
    p = jnp.asarray(truth(k_truth), jnp.result_type(float))
    rho = cj.propose(k_prop, p, accuracy=accuracy)
    biased = cj.simulate_counts(k_bias, p, rho, num_annotations=num_annotations, delta=delta)
    cal = cj.calibration_sample(
        k_cal, p, num_images=num_calibration, num_annotations=UNBIASED_PER_IMAGE
    )
    unbiased = jnp.zeros_like(biased).at[cal.indices].set(cal.counts)
    return biased, rho, unbiased, k_fit


def replicate(
    key: jax.Array,
    truth: Truth,
    *,
    delta: float,
    num_annotations: int,
    num_calibration: int,
    accuracy: float,
    fit_kwargs: dict,
) -> dict:
    """One campaign (:func:`simulate_campaign`), then the fit."""
    biased, rho, unbiased, k_fit = simulate_campaign(
        key, truth, delta=delta, num_annotations=num_annotations,
        num_calibration=num_calibration, accuracy=accuracy,
    )  # fmt: skip
    t0 = time.perf_counter()
    res = cj.fit(k_fit, biased, rho, unbiased_counts=unbiased, **fit_kwargs)
    fit_s = time.perf_counter() - t0
    sd = float(jnp.std(res.delta_samples))
    lo, hi = res.delta_interval
    return dict(
        estimate=res.delta,
        lo=lo,
        hi=hi,
        sd=sd,
        covered=bool(lo <= delta <= hi),
        z=(res.delta - delta) / sd if sd > 0 else math.copysign(math.inf, res.delta - delta),
        converged=res.converged,
        fit_s=fit_s,
        widening=res.delta_widening,
    )


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion."""
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def cell_line(runs: list[dict], **cell) -> dict:
    """The cell's summary of its replicates (see the module docstring)."""
    n = len(runs)
    covered = sum(r["covered"] for r in runs)
    coverage = covered / n
    ci = clopper_pearson(covered, n)
    z = np.array([r["z"] for r in runs])
    beyond = int(np.sum(np.abs(z) > 3))
    err = np.array([r["estimate"] for r in runs]) - cell["delta"]
    width = np.array([r["hi"] - r["lo"] for r in runs])
    return emit(
        case="cell",
        **cell,
        replicates=n,
        covered=covered,
        coverage=coverage,
        coverage_ci95=list(ci),
        nominal_in_ci=bool(ci[0] <= LEVEL <= ci[1]),
        in_target_band=bool(BAND[0] <= coverage <= BAND[1]),
        beyond_3sd=beyond,
        beyond_3sd_rate=beyond / n,
        beyond_3sd_allowance=GAUSS_3SD,
        beyond_3sd_p_value=float(stats.binomtest(beyond, n, GAUSS_3SD, "greater").pvalue),
        z_mean=float(np.mean(z)),
        z_sd=float(np.std(z, ddof=1)) if n > 1 else None,
        delta_bias=float(np.mean(err)),
        delta_rmse=float(np.sqrt(np.mean(err**2))),
        posterior_sd_mean=float(np.mean([r["sd"] for r in runs])),
        estimate_sd=float(np.std(err, ddof=1)) if n > 1 else None,
        interval_width_mean=float(np.mean(width)),
        converged=sum(r["converged"] for r in runs),
        widening_mean=float(np.mean([r["widening"] for r in runs])),
        widening_range=[
            float(min(r["widening"] for r in runs)),
            float(max(r["widening"] for r in runs)),
        ],
        fit_s_median=statistics.median(r["fit_s"] for r in runs),
        fit_s_max=max(r["fit_s"] for r in runs),
        z_values=[round(float(v), 3) for v in z],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10H counts")
    parser.add_argument(
        "--datasets", nargs="+", default=["cifar10h", "Turkey", "MiceBone", "Plankton"],
        help="'cifar10h' (the --data file) or DCIC preset names",
    )  # fmt: skip
    parser.add_argument("--annotations", type=int, nargs="+", default=[1, 3, 10, 50], help="N")
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument(
        "--calibration", type=int, nargs="+", default=[50, 100, 400],
        help="calibration images (10 unbiased annotations each)",
    )  # fmt: skip
    parser.add_argument("--replicates", type=int, default=20, help="campaigns per cell")
    parser.add_argument("--images", type=int, default=2000, help="images per campaign")
    parser.add_argument("--accuracy", type=float, default=0.85, help="proposer accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--delta-prior", type=float, nargs=2, default=None, metavar=("A", "B"),
        help="Beta prior of delta / 1* passed to fit (default: fit's own)",
    )  # fmt: skip
    parser.add_argument(
        "--num-components", type=int, default=None,
        help="Dirichlet components per prior row passed to fit (default: fit's own)",
    )  # fmt: skip
    parser.add_argument(
        "--guide-draws", action="store_true",
        help="delta's draws from the variational guide (fit's exact_delta=False)",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args()
    fit_kwargs: dict = dict(num_ppc_replicates=0, check_model=False)
    if args.num_components is not None:
        fit_kwargs["num_components"] = args.num_components
    if args.delta_prior is not None:
        fit_kwargs["delta_prior"] = tuple(args.delta_prior)
    if args.guide_draws:
        fit_kwargs["exact_delta"] = False
    if args.tiny:
        args.datasets, args.annotations, args.deltas = ["Turkey"], [5], [0.3]
        args.calibration, args.replicates, args.images = [50], 2, 300
        fit_kwargs.update(num_interval_draws=16)
    if max(args.calibration) > args.images:
        parser.error(f"--calibration {max(args.calibration)} exceeds --images {args.images}")
    # IdentifiabilityWarning (few calibration images) and ConvergenceWarning are part of
    # what is measured here: the fit's interval is scored whatever it warned.
    warnings.simplefilter("ignore", cj.IdentifiabilityWarning)
    warnings.simplefilter("ignore", cj.ConvergenceWarning)

    sources = [truth_source(name, args.data, args.images) for name in args.datasets]
    emit(
        case="setup", sources=[s for _, _, s in sources], annotations=args.annotations,
        deltas=args.deltas, calibration=args.calibration, replicates=args.replicates,
        images=args.images, accuracy=args.accuracy, unbiased_per_image=UNBIASED_PER_IMAGE,
        level=LEVEL, seed=args.seed, delta_prior=fit_kwargs.get("delta_prior", "default"),
        num_components=fit_kwargs.get("num_components", "default"),
        delta_draws="guide" if args.guide_draws else "exact",
    )  # fmt: skip
    base = jax.random.key(args.seed)
    cells = []
    grid = itertools.product(enumerate(sources), args.annotations, args.deltas, args.calibration)
    for (di, (truth, name, _)), num, delta, num_cal in grid:
        cell_key = base
        for part in (di, num, round(1000 * delta), num_cal):
            cell_key = jax.random.fold_in(cell_key, part)
        cell = dict(dataset=name, num_annotations=num, delta=delta, calibration_images=num_cal)
        runs = [
            replicate(
                jax.random.fold_in(cell_key, r),
                truth,
                delta=delta,
                num_annotations=num,
                num_calibration=num_cal,
                accuracy=args.accuracy,
                fit_kwargs=fit_kwargs,
            )
            for r in range(args.replicates)
        ]
        cells.append(cell_line(runs, **cell))
    worst = max(cells, key=lambda c: (abs(c["coverage"] - LEVEL), -c["coverage"]))
    emit(
        case="summary",
        cells=len(cells),
        cells_in_target_band=sum(c["in_target_band"] for c in cells),
        cells_nominal_in_ci=sum(c["nominal_in_ci"] for c in cells),
        coverage_pooled=sum(c["covered"] for c in cells) / sum(c["replicates"] for c in cells),
        worst_cell={k: worst[k] for k in WORST_KEYS},
    )


if __name__ == "__main__":
    main()
