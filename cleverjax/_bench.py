"""SPA throughput benchmark with its baselines, shared by ``cleverjax bench`` and
``benchmarks/spa_throughput.py``.

Every JAX case is timed after a warm-up (compile time reported apart, median of repeated
runs) and printed as one JSON line; the baselines run in the same process: a pure-Python
per-annotation loop in the style of the reference implementation, a vectorised NumPy
per-annotation version, and NumPy's ``Generator.multinomial`` for the count form.
"""

from __future__ import annotations

import bisect
import json
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._spa import biased_distribution, simulate_annotations, simulate_counts

DELTA, ONE_STAR = 0.2, 0.99


def peak_memory_bytes() -> int | None:
    """Peak resident memory of this process in bytes; ``None`` where the platform does not
    report it (Windows has no ``resource`` module)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB on Linux and the BSDs.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{len(jax.devices())}"


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call incl. compile, median of ``repeats`` later calls) in seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t0)
    run = statistics.median(runs)
    return max(first - run, 0.0), run


def emit(**fields) -> dict:
    fields.setdefault("device", device_name())
    print(json.dumps(fields), flush=True)
    return fields


def problem(n: int, num_classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(num_classes), size=n).astype(np.float32)
    rho = rng.integers(0, num_classes, size=n).astype(np.int32)
    return p, rho


def python_loop(p: np.ndarray, rho: np.ndarray, num: int, seed: int = 0) -> np.ndarray:
    """Algorithm 1 one annotation at a time, as the reference implementation does."""
    rnd = random.Random(seed)
    out = np.empty((len(p), num), np.int32)
    for i, (row, r) in enumerate(zip(p.tolist(), rho.tolist())):
        accept = DELTA + (ONE_STAR - DELTA) * row[r]
        others = [0.0 if k == r else v for k, v in enumerate(row)]
        total = sum(others)
        cdf, acc = [], 0.0
        for v in others:
            acc += v / total
            cdf.append(acc)
        for j in range(num):
            if rnd.random() < accept:
                out[i, j] = r
            else:
                out[i, j] = min(bisect.bisect_right(cdf, rnd.random()), len(row) - 1)
    return out


def numpy_vectorised(
    rng: np.random.Generator, p: np.ndarray, rho: np.ndarray, num: int, chunk: int = 2000
) -> np.ndarray:
    """One uniform per annotation, vectorised over images and annotations with NumPy."""
    n, k = p.shape
    idx = np.arange(n)
    accept = DELTA + (ONE_STAR - DELTA) * p[idx, rho]
    others = p.copy()
    others[idx, rho] = 0
    cdf = np.cumsum(others / others.sum(axis=1, keepdims=True), axis=1)
    out = np.empty((n, num), np.int32)
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        u = rng.random((len(p[sl]), num))
        a = accept[sl, None]
        v = (u - a) / (1 - a)
        pick = np.minimum((v[:, :, None] >= cdf[sl, None, :]).sum(axis=2), k - 1)
        out[sl] = np.where(u < a, rho[sl, None], pick)
    return out


def kernel_case(
    case: str, fn, *, images: int, per_image: int, repeats: int, images_rate: bool = False
) -> dict:
    """Time a kernel (compilation apart) and emit its line."""
    compile_s, run_s = timed(fn, repeats)
    rates = {"images_per_s": images / run_s} if images_rate else {}
    return emit(
        case=case,
        images=images,
        annotations_per_image=per_image,
        **rates,
        annotations_per_s=images * per_image / run_s,
        compile_s=compile_s,
        run_s=run_s,
    )


def spa_throughput(*, tiny: bool = False, big: bool = False, repeats: int = 7) -> list[dict]:
    """Run every case; print and return one dict per case, the summary last."""
    n, num = (2000, 20) if tiny else (100_000, 100)
    n_count, num_count = (2000, 1000) if tiny else (100_000, 1000)
    n_python = 200 if tiny else 20_000
    p_np, rho_np = problem(n)
    p, rho = jnp.asarray(p_np), jnp.asarray(rho_np)
    key = jax.random.key(0)
    results = {}

    # Baselines, measured here and now.
    t0 = time.perf_counter()
    python_loop(p_np[:n_python], rho_np[:n_python], num)
    rate = n_python * num / (time.perf_counter() - t0)
    results["python"] = emit(
        case="baseline_python_loop",
        images=n_python,
        annotations_per_image=num,
        annotations_per_s=rate,
    )
    rng = np.random.default_rng(1)
    runs = []
    for _ in range(max(1, repeats // 2)):
        t0 = time.perf_counter()
        numpy_vectorised(rng, p_np, rho_np, num)
        runs.append(time.perf_counter() - t0)
    rate = n * num / statistics.median(runs)
    results["numpy"] = emit(
        case="baseline_numpy_vectorised",
        images=n,
        annotations_per_image=num,
        annotations_per_s=rate,
    )

    pc_np, rhoc_np = problem(n_count, seed=2)
    pb = np.asarray(biased_distribution(pc_np, rhoc_np, delta=DELTA, one_star=ONE_STAR), np.float64)
    pb /= pb.sum(axis=1, keepdims=True)
    runs = []
    for _ in range(max(1, repeats // 2)):
        t0 = time.perf_counter()
        rng.multinomial(num_count, pb)
        runs.append(time.perf_counter() - t0)
    rate = n_count / statistics.median(runs)
    results["numpy_multinomial"] = emit(
        case="baseline_numpy_multinomial",
        images=n_count,
        annotations_per_image=num_count,
        images_per_s=rate,
    )

    # JAX kernels.
    results["labels"] = kernel_case(
        "jax_per_annotation_labels",
        lambda: simulate_annotations(
            key, p, rho, num_annotations=num, delta=DELTA, one_star=ONE_STAR
        ),
        images=n,
        per_image=num,
        repeats=repeats,
    )
    results["streamed"] = kernel_case(
        "jax_per_annotation_streamed_counts",
        lambda: simulate_counts(
            key, p, rho, num_annotations=num, delta=DELTA, one_star=ONE_STAR, method="annotations"
        ),
        images=n,
        per_image=num,
        repeats=repeats,
    )
    pc, rhoc = jnp.asarray(pc_np), jnp.asarray(rhoc_np)
    results["counts"] = kernel_case(
        "jax_count_form",
        lambda: simulate_counts(
            key, pc, rhoc, num_annotations=num_count, delta=DELTA, one_star=ONE_STAR
        ),
        images=n_count,
        per_image=num_count,
        repeats=repeats,
        images_rate=True,
    )

    if big:
        # 10^10 annotations in one call, streamed annotation by annotation into counts.
        n_big, num_big = 10**6, 10**4
        pg_np, rhog_np = problem(n_big, seed=3)
        pg, rhog = jnp.asarray(pg_np), jnp.asarray(rhog_np)
        t0 = time.perf_counter()
        counts = jax.block_until_ready(
            simulate_counts(
                key,
                pg,
                rhog,
                num_annotations=num_big,
                delta=DELTA,
                one_star=ONE_STAR,
                method="annotations",
            )
        )
        wall = time.perf_counter() - t0
        total = int(np.asarray(counts, np.int64).sum())
        if total != n_big * num_big:
            raise RuntimeError(
                f"streamed counts sum to {total}; expected {n_big * num_big} annotations"
            )
        peak = peak_memory_bytes()
        results["big"] = emit(
            case="jax_1e10_annotations_streamed",
            images=n_big,
            annotations_per_image=num_big,
            annotations_per_s=1e10 / wall,
            wall_s_incl_compile=wall,
            peak_host_rss_gib=None if peak is None else peak / 2**30,
        )
        t0 = time.perf_counter()
        counts = jax.block_until_ready(
            simulate_counts(key, pg, rhog, num_annotations=num_big, delta=DELTA, one_star=ONE_STAR)
        )
        wall = time.perf_counter() - t0
        results["big_counts"] = emit(
            case="jax_1e10_annotations_count_form",
            images=n_big,
            annotations_per_image=num_big,
            annotations_per_s=1e10 / wall,
            wall_s_incl_compile=wall,
        )

    labels_vs_numpy = results["labels"]["annotations_per_s"] / results["numpy"]["annotations_per_s"]
    counts_vs_numpy = (
        results["counts"]["images_per_s"] / results["numpy_multinomial"]["images_per_s"]
    )
    on_gpu = jax.devices()[0].platform == "gpu"
    summary = dict(
        case="summary",
        labels_vs_numpy_vectorised=labels_vs_numpy,
        labels_vs_python_loop=(
            results["labels"]["annotations_per_s"] / results["python"]["annotations_per_s"]
        ),
        count_form_vs_numpy_multinomial=counts_vs_numpy,
    )
    if on_gpu:
        summary["target_gpu_per_annotation_1e11_met"] = (
            results["labels"]["annotations_per_s"] >= 1e11
        )
        summary["target_gpu_count_form_5e8_images_met"] = results["counts"]["images_per_s"] >= 5e8
    elif not tiny:
        summary["target_cpu_labels_8x_numpy_met"] = labels_vs_numpy >= 8
        summary["target_cpu_count_form_half_numpy_met"] = counts_vs_numpy >= 0.5
    results["summary"] = emit(**summary)
    return list(results.values())
