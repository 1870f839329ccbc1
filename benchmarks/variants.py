"""Robust variants of the model: which one cross-validation picks, and its KL.

Set-up: 10^4 images drawn with replacement from the CIFAR-10H soft labels
(``../shared/data/cifar10h/cifar10h-counts.npy``; Dirichlet(0.2) rows over 10 classes
when the file is absent, and said so), proposals from a proposer of accuracy 0.85, N = 10
biased annotations, 1* = 0.99, 100 calibration images with 10 unbiased annotations.
Scenarios (how the annotators behave):

* ``spa``: SPA with delta = 0.3 (the control: SPA should be chosen);
* ``uniform_rejection``: delta = 0.3, but a rejection picks uniformly among the others;
* ``delta_by_class``: SPA with delta 0.15 for proposals of classes 0-4, 0.45 for 5-9;
* ``delta_by_difficulty``: SPA with a per-image delta_i = 0.6 (1 - t_i) + 0.1 t_i,
  t_i = p_i[rho] (hard images accept the proposal more often; the scenario of
  ``benchmarks/model_checks.py``).

Each scenario fits every variant of :data:`cleverjax.bayes.compare.ROBUST_VARIANTS`
(:func:`cleverjax.compare_models`, 5-fold cross-validation over the calibration images)
and reports each variant's KL to the truth, its held-out score, the variant chosen, and
CleverLabel's KL (paper settings: delta 0.1, mu 0.75).

Target (issue: robust variants): under uniform rejection, the chosen variant's KL within
1.25x of the correctly specified fit (``rejection="uniform"``).

    python benchmarks/variants.py                 # four scenarios, 10^4 images
    python benchmarks/variants.py --scenarios delta_by_difficulty --variants spa delta_by_difficulty
    python benchmarks/variants.py --tiny          # 1000 images, two variants, one scenario
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
import numpy as np  # noqa: E402

import cleverjax as cj  # noqa: E402
from cleverjax._bench import emit  # noqa: E402

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10h" / "cifar10h-counts.npy"
)
TARGET_RATIO = 1.25


def truth(images: int, seed: int, path: Path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if path.exists():
        counts = np.load(path).astype(np.float64)
        soft = counts / counts.sum(axis=1, keepdims=True)
        return "cifar10h", soft[rng.integers(soft.shape[0], size=images)].astype(np.float32)
    return "dirichlet", rng.dirichlet(np.full(10, 0.2), size=images).astype(np.float32)


SCENARIOS = {
    "spa": ("spa", dict(rejection="proportional")),
    "uniform_rejection": ("uniform_rejection", dict(rejection="uniform")),
    "delta_by_class": ("delta_by_class", dict(rejection="proportional")),
    "delta_by_difficulty": ("delta_by_difficulty", dict(rejection="proportional")),
}
"""Scenario -> (the variant that is correctly specified, simulation options)."""


def run(scenario: str, images: int, seed: int, path: Path, variants: dict) -> dict:
    source, p_np = truth(images, seed, path)
    p = jnp.asarray(p_np)
    k_prop, k_sim, k_cal, k_fit = jax.random.split(jax.random.key(seed), 4)
    rho = cj.propose(k_prop, p, accuracy=0.85)
    correct, options = SCENARIOS[scenario]
    delta = jnp.where(rho < 5, 0.15, 0.45) if scenario == "delta_by_class" else 0.3
    if scenario == "delta_by_difficulty":
        t = jnp.take_along_axis(p, rho[:, None], axis=1)[:, 0]
        delta = 0.6 * (1 - t) + 0.1 * t
    biased = cj.simulate_counts(k_sim, p, rho, num_annotations=10, delta=delta, **options)
    cal = cj.calibration_sample(k_cal, p, num_images=100, num_annotations=10)
    unbiased = jnp.zeros_like(biased).at[cal.indices].set(cal.counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matrix = cj.estimate_class_matrix(cal.counts)
        t0 = time.perf_counter()
        cmp = cj.compare_models(
            k_fit, biased, rho, unbiased_counts=unbiased, variants=variants, num_ppc_replicates=0
        )
    seconds = time.perf_counter() - t0
    kl = {c: float(cj.kl_divergence(p, f.posterior_mean)) for c, f in cmp.fits.items()}
    clever = cj.cleverlabel(biased, rho, matrix, delta=0.1, mu=0.75)
    scores = cmp.to_dict()["variants"]
    return dict(
        case=scenario,
        truth=source,
        images=images,
        seed=seed,
        chosen=cmp.best,
        top=cmp.top,
        correct=correct,
        kl=kl,
        kl_cleverlabel=float(cj.kl_divergence(p, clever)),
        ratio_chosen_to_correct=kl[cmp.best] / kl[correct] if correct in kl else None,
        elpd={c: round(s["elpd"], 2) for c, s in scores.items()},
        elpd_diff_se={c: round(s["diff_se"], 2) for c, s in scores.items()},
        delta={c: s["delta"] for c, s in scores.items()},
        delta_by_class=scores.get("delta_by_class", {}).get("delta_by_class"),
        delta_by_difficulty=scores.get("delta_by_difficulty", {}).get("delta_by_difficulty"),
        true_mean_delta=float(jnp.mean(jnp.broadcast_to(delta, rho.shape))),
        uniform_share=scores.get("mixed_rejection", {}).get("uniform_share"),
        converged={c: f.converged for c, f in cmp.fits.items()},
        seconds=seconds,
    )


def main() -> None:
    from cleverjax.bayes.compare import ROBUST_VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=None)
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(ROBUST_VARIANTS), default=None,
        help="compare only these variants (default: all, in ROBUST_VARIANTS' order)",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="small smoke run")
    args = parser.parse_args()
    variants = {
        k: v for k, v in ROBUST_VARIANTS.items() if args.variants is None or k in args.variants
    }
    scenarios = args.scenarios or list(SCENARIOS)
    if args.tiny:
        args.images, scenarios = 1000, ["uniform_rejection"]
        variants = {k: variants[k] for k in ("spa", "uniform_rejection")}
    runs = [run(s, args.images, args.seed, args.data, variants) for s in scenarios]
    for r in runs:
        emit(**r)
    by = {r["case"]: r for r in runs}
    uniform = by.get("uniform_rejection")
    emit(
        case="summary",
        images=args.images,
        chosen={r["case"]: r["chosen"] for r in runs},
        ratio_chosen_to_correct={r["case"]: r["ratio_chosen_to_correct"] for r in runs},
        target_ratio=TARGET_RATIO,
        target_met=None
        if uniform is None
        else bool(uniform["ratio_chosen_to_correct"] <= TARGET_RATIO),
    )


if __name__ == "__main__":
    main()
