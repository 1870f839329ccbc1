"""The default fit when annotators do not follow SPA: labels, delta and the checks, by scenario.

Set-up: images drawn with replacement from the CIFAR-10H soft labels
(``../shared/data/cifar10h/cifar10h-counts.npy``; Dirichlet(0.2) rows over 10 classes
when the file is absent, and said so), a proposer of accuracy 0.85, N = 10 biased
annotations, 1* = 0.99, the paper's calibration budget (100 images with 10 unbiased
annotations). Scenarios (how the annotators behave):

* ``spa``: SPA with delta = 0.3;
* ``uniform_rejection``: delta = 0.3, a rejection picks uniformly among the other classes;
* ``difficulty_delta``: per-image delta_i = 0.6 (1 - t_i) + 0.1 t_i, t_i = p_i[rho];
* ``delta_by_class``: delta 0.15 for proposals of classes 0-4, 0.45 for 5-9;
* ``k100``: SPA with delta = 0.3 on K = 100 classes (the truth of
  ``benchmarks/many_classes.py``), ``--k100-images`` images.

Each scenario runs :func:`cleverjax.fit` with its defaults (SPA, the model checks and the
predictive check on) and reports: KL to the truth of the model and of CleverLabel (paper
settings, delta 0.1 and mu 0.75; and with the scenario's mean true delta), the error of
delta against the images' mean true delta and whether the 90 % interval covers it, and
the p-value of every check. Which variant :func:`cleverjax.compare_models` would choose
is ``benchmarks/variants.py``'s question.

    python benchmarks/robustness.py                 # five scenarios, one seed
    python benchmarks/robustness.py --seeds 0 1 2 --scenarios spa difficulty_delta
    python benchmarks/robustness.py --tiny          # 1000 images, two scenarios (CI)
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

if __name__ == "__main__":
    import numpyro

    numpyro.set_host_device_count(os.cpu_count() or 1)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from many_classes import ground_truth as k100_truth  # noqa: E402
from variants import DEFAULT_DATA, truth  # noqa: E402

import cleverjax as cj  # noqa: E402
from cleverjax._bench import emit  # noqa: E402

SCENARIOS = ("spa", "uniform_rejection", "difficulty_delta", "delta_by_class", "k100")


def scenario_delta(scenario: str, p: jax.Array, rho: jax.Array) -> jax.Array:
    """Each image's true delta."""
    if scenario == "difficulty_delta":
        t = jnp.take_along_axis(p, rho[:, None], axis=1)[:, 0]
        return 0.6 * (1 - t) + 0.1 * t
    if scenario == "delta_by_class":
        return jnp.where(rho < 5, 0.15, 0.45)
    return jnp.full(rho.shape, 0.3)


def run(scenario: str, seed: int, images: int, k100_images: int, path: Path) -> dict:
    if scenario == "k100":
        source, p_np = "k100", k100_truth(seed, 100, k100_images)
    else:
        source, p_np = truth(images, seed, path)
    p = jnp.asarray(p_np)
    k_prop, k_sim, k_cal, k_fit = jax.random.split(jax.random.key(seed), 4)
    rho = cj.propose(k_prop, p, accuracy=0.85)
    delta = scenario_delta(scenario, p, rho)
    rejection = "uniform" if scenario == "uniform_rejection" else "proportional"
    biased = cj.simulate_counts(k_sim, p, rho, num_annotations=10, delta=delta, rejection=rejection)
    cal = cj.calibration_sample(k_cal, p, num_images=100, num_annotations=10)
    unbiased = jnp.zeros_like(biased).at[cal.indices].set(cal.counts)
    true_delta = float(jnp.mean(delta))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty class-blending rows; failed checks
        matrix = cj.estimate_class_matrix(cal.counts)
        t0 = time.perf_counter()
        res = cj.fit(k_fit, biased, rho, unbiased_counts=unbiased, num_interval_draws=0)
        fit_s = time.perf_counter() - t0
    clever = cj.cleverlabel(biased, rho, matrix, delta=0.1, mu=0.75)
    clever_true = cj.cleverlabel(biased, rho, matrix, delta=true_delta, mu=0.75)
    lo, hi = res.delta_interval
    return dict(
        case=scenario,
        truth=source,
        seed=seed,
        images=int(p.shape[0]),
        classes=int(p.shape[1]),
        kl_model=float(cj.kl_divergence(p, res.posterior_mean)),
        kl_cleverlabel=float(cj.kl_divergence(p, clever)),
        kl_cleverlabel_true_delta=float(cj.kl_divergence(p, clever_true)),
        true_mean_delta=true_delta,
        delta=res.delta,
        delta_interval=[lo, hi],
        delta_error=res.delta - true_delta,
        covered=bool(lo <= true_delta <= hi),
        checks={c.name: c.p_value for c in res.checks},
        checks_failed=[c.name for c in res.checks if not c.passed],
        ppc_p_value=None if res.ppc is None else res.ppc.p_value,
        fit_s=fit_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--k100-images", type=int, default=2000, dest="k100_images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--tiny", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.scenarios, args.seeds = 1000, ["spa", "uniform_rejection"], [0]
    runs = [
        emit(**run(s, seed, args.images, args.k100_images, args.data))
        for s in args.scenarios
        for seed in args.seeds
    ]
    emit(
        case="summary",
        images=args.images,
        model_beats_cleverlabel={
            s: all(r["kl_model"] < r["kl_cleverlabel"] for r in runs if r["case"] == s)
            for s in args.scenarios
        },
        covered={
            s: f"{sum(r['covered'] for r in runs if r['case'] == s)}/{len(args.seeds)}"
            for s in args.scenarios
        },
        checks_failed={
            s: [r["checks_failed"] for r in runs if r["case"] == s] for s in args.scenarios
        },
    )


if __name__ == "__main__":
    main()
