"""Robust rejection kernels: which kernel the PSIS-LOO comparison picks, and its KL.

Set-up: 10^4 images drawn with replacement from the CIFAR-10H soft labels
(``../shared/data/cifar10h/cifar10h-counts.npy``; Dirichlet(0.2) rows over 10 classes
when the file is absent, and said so), proposals from a proposer of accuracy 0.85, N = 10
biased annotations, delta = 0.3, 1* = 0.99, 100 calibration images with 10 unbiased
annotations.
Scenarios: annotators who reject ``uniform``-ly among the other classes, and SPA
(``proportional``) as the control. Each scenario fits the model with every kernel
(:func:`cleverjax.compare_rejection`, 5-fold cross-validation over the calibration
images) and reports each kernel's KL to the truth, its held-out score, the kernel chosen,
and CleverLabel's KL (paper settings: delta 0.1, mu 0.75).

Target (issue: robust variants): under uniform rejection, the chosen kernel's KL within
1.25x of the correctly specified fit (``rejection="uniform"``).

    python benchmarks/rejection.py                 # both scenarios, 10^4 images
    python benchmarks/rejection.py --tiny          # 1000 images, seconds to minutes
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


def run(scenario: str, images: int, seed: int, path: Path) -> dict:
    source, p_np = truth(images, seed, path)
    p = jnp.asarray(p_np)
    k_prop, k_sim, k_cal, k_fit = jax.random.split(jax.random.key(seed), 4)
    rho = cj.propose(k_prop, p, accuracy=0.85)
    biased = cj.simulate_counts(k_sim, p, rho, num_annotations=10, delta=0.3, rejection=scenario)
    cal = cj.calibration_sample(k_cal, p, num_images=100, num_annotations=10)
    unbiased = jnp.zeros_like(biased).at[cal.indices].set(cal.counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matrix = cj.estimate_class_matrix(cal.counts)
        t0 = time.perf_counter()
        cmp = cj.compare_rejection(
            k_fit, biased, rho, unbiased_counts=unbiased, num_ppc_replicates=0
        )
    seconds = time.perf_counter() - t0
    kl = {c: float(cj.kl_divergence(p, f.posterior_mean)) for c, f in cmp.fits.items()}
    clever = cj.cleverlabel(biased, rho, matrix, delta=0.1, mu=0.75)
    scores = cmp.to_dict()["candidates"]
    return dict(
        case=scenario,
        truth=source,
        images=images,
        seed=seed,
        chosen=cmp.best,
        kl=kl,
        kl_cleverlabel=float(cj.kl_divergence(p, clever)),
        ratio_chosen_to_correct=kl[cmp.best] / kl[scenario],
        elpd={c: round(s["elpd"], 2) for c, s in scores.items()},
        elpd_diff_se={c: round(s["diff_se"], 2) for c, s in scores.items()},
        delta={c: s["delta"] for c, s in scores.items()},
        delta_interval={c: list(f.delta_interval) for c, f in cmp.fits.items()},
        uniform_share={c: s["uniform_share"] for c, s in scores.items()},
        seconds=seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tiny", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.tiny:
        args.images = 1000
    runs = [run(s, args.images, args.seed, args.data) for s in ("uniform", "proportional")]
    for r in runs:
        emit(**r)
    uniform = runs[0]
    emit(
        case="summary",
        images=args.images,
        truth=uniform["truth"],
        chosen_under_uniform=uniform["chosen"],
        chosen_under_spa=runs[1]["chosen"],
        ratio_chosen_to_correct=uniform["ratio_chosen_to_correct"],
        target_ratio=TARGET_RATIO,
        target_met=bool(uniform["ratio_chosen_to_correct"] <= TARGET_RATIO),
    )


if __name__ == "__main__":
    main()
