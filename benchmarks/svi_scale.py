"""SVI throughput of the Bayesian model at scale, against plain NumPyro SVI in the same run.

For each size in ``--images`` (CIFAR-10H-like ground truth, proposer accuracy 0.9,
delta = 0.2, 10 biased annotations per image, 100 calibration images) one ``cleverjax.fit``
is timed end to end: compilation, merging of identical images, SVI to the plateau, the
posterior summaries and peak host memory included. ``image_steps_per_s`` is images /
``FitResult.step_seconds`` (the steps alone, after compilation);
``end_to_end_image_steps_per_s`` is images x steps / the whole wall time.

Baseline: the textbook way, the uncollapsed model (a latent ``p`` per image,
``cleverjax.spa_model_uncollapsed``) with NumPyro's ``AutoNormal`` guide and
``Trace_ELBO``, at ``--baseline-images`` images; its steps are timed after compilation.

    python benchmarks/svi_scale.py --images 100000 1000000 10000000
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings
from pathlib import Path

if __name__ == "__main__":
    import numpyro

    numpyro.set_host_device_count(os.cpu_count() or 1)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402

import cleverjax as cj  # noqa: E402
from cleverjax._bench import emit  # noqa: E402

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10h" / "cifar10h-counts.npy"
)


def peak_rss_gib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def ground_truth(path: Path, num_images: int, seed: int) -> jax.Array:
    """``num_images`` rows resampled from CIFAR-10H's soft labels (or the preset)."""
    if path.exists():
        counts = np.load(path)
        rows = np.random.default_rng(seed).integers(0, counts.shape[0], num_images)
        soft = counts[rows] / counts[rows].sum(axis=1, keepdims=True)
        return jnp.asarray(soft, jnp.float32)
    return cj.sample_ground_truth(
        jax.random.key(seed), "CIFAR10H", num_images=num_images, annotations_per_image=50
    )


def campaign(p: jax.Array, seed: int):
    k_prop, k_sim, k_cal = jax.random.split(jax.random.key(seed), 3)
    rho = cj.propose(k_prop, p, accuracy=0.9)
    biased = cj.simulate_counts(k_sim, p, rho, num_annotations=10, delta=0.2)
    cal = cj.calibration_sample(k_cal, p, num_images=100, num_annotations=10)
    unbiased = jnp.zeros_like(biased).at[cal.indices].set(cal.counts)
    return rho, biased, unbiased


def cleverjax_case(path: Path, num_images: int, max_steps: int | None) -> dict:
    p = ground_truth(path, num_images, seed=num_images)
    rho, biased, unbiased = campaign(p, seed=1)
    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    t0 = time.perf_counter()
    res = cj.fit(
        jax.random.key(2), biased, rho, unbiased_counts=unbiased, num_ppc_replicates=0, **kwargs
    )
    jax.block_until_ready(res.posterior_mean)
    wall = time.perf_counter() - t0
    steps = int(res.losses.shape[0])
    return emit(
        case="cleverjax.fit",
        images=num_images,
        annotations_per_image=10,
        steps=steps,
        converged=res.converged,
        wall_s=wall,
        step_seconds=res.step_seconds,
        image_steps_per_s=num_images / res.step_seconds,
        end_to_end_image_steps_per_s=num_images * steps / wall,
        delta=res.delta,
        delta_interval=list(res.delta_interval),
        peak_rss_gib=peak_rss_gib(),
    )


def baseline_case(path: Path, num_images: int, steps: int) -> dict:
    p = ground_truth(path, num_images, seed=num_images)
    rho, biased, _ = campaign(p, seed=1)
    k = p.shape[1]
    kwargs = dict(mean=jnp.full((k, k), 1 / k), concentration=jnp.ones(k))
    model = cj.spa_model_uncollapsed
    guide = AutoNormal(model)
    svi = SVI(model, guide, optax.adam(1e-2), Trace_ELBO())
    state = svi.init(jax.random.key(3), biased, rho, **kwargs)
    update = jax.jit(lambda s: svi.update(s, biased, rho, **kwargs))
    t0 = time.perf_counter()
    state, loss = update(state)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, loss = update(state)
    jax.block_until_ready(loss)
    wall = time.perf_counter() - t0
    return emit(
        case="baseline: NumPyro SVI, uncollapsed model, AutoNormal",
        images=num_images,
        annotations_per_image=10,
        steps=steps,
        compile_s=compile_s,
        wall_s=wall,
        image_steps_per_s=num_images * steps / wall,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10H counts")
    parser.add_argument("--images", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--baseline-images", type=int, default=100_000, dest="baseline_images")
    parser.add_argument("--baseline-steps", type=int, default=100, dest="baseline_steps")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args()
    warnings.simplefilter("ignore", cj.ConvergenceWarning)
    max_steps = None
    if args.tiny:
        args.images, args.baseline_images, args.baseline_steps, max_steps = [500], 500, 5, 100

    base = baseline_case(args.data, args.baseline_images, args.baseline_steps)
    runs = [cleverjax_case(args.data, n, max_steps) for n in args.images]
    largest = runs[-1]
    emit(
        case="summary",
        largest_images=largest["images"],
        image_steps_per_s=largest["image_steps_per_s"],
        speedup_vs_baseline=largest["image_steps_per_s"] / base["image_steps_per_s"],
        gpu_target_5e8_met=(
            largest["image_steps_per_s"] >= 5e8 and largest["images"] >= 10**6
            if jax.devices()[0].platform == "gpu"
            else None
        ),
        peak_rss_gib=peak_rss_gib(),
    )


if __name__ == "__main__":
    main()
