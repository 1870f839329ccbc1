"""``cleverjax demo``: the whole pipeline on a built-in dataset, in about a minute."""

from __future__ import annotations

import math
import time
import warnings
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._correction import (
    bias_correction,
    calibration_sample,
    class_blending,
    cleverlabel,
    estimate_class_matrix,
    estimate_delta,
    soft_labels,
)
from ._metrics import kl_divergence
from ._presets import preset as get_preset
from ._presets import sample_ground_truth
from ._spa import propose, simulate_counts
from .bayes import ConvergenceWarning, fit

SPEED_ANNOTATIONS = 20_000_000
"""Annotations in the engine's speed measurement: a call long enough that its fixed
overhead (dispatch, a few small arrays) does not show in the rate."""


def run_demo(
    *,
    preset: str = "CIFAR10H",
    images: int = 5000,
    delta: float = 0.3,
    annotations: int = 10,
    accuracy: float = 0.9,
    seed: int = 0,
    plot: str | None = "cleverjax-demo.png",
    progress: bool = False,
    speed_annotations: int = SPEED_ANNOTATIONS,
) -> pd.DataFrame:
    """Simulate a DCIC preset with SPA, repair it three ways, and compare with the truth.

    Ground truth: ``images`` label distributions drawn like the preset (empirical soft
    labels of 50 annotations). Every image gets ``annotations`` SPA annotations with the
    proposal of a simulated proposer; 100 random images also get 10 annotations without
    proposals (the paper's calibration design). Printed first: the engine's check
    (:func:`spa_check`, the share of annotations on the proposal against its closed form
    and the throughput, for several deltas and N). Then KL(truth || labels) of the raw
    biased labels, class blending, bias correction, CleverLabel (delta = 0.1 as in the
    paper, and with the true delta) and the Bayesian model, then delta as estimated by
    regression on the calibration images and by the model, next to the true value.

    Args:
        preset: keyword-only; DCIC preset the ground truth mimics.
        images: keyword-only; images to simulate.
        delta: keyword-only; the true acceptance offset.
        annotations: keyword-only; annotations with proposals per image.
        accuracy: keyword-only; the simulated proposer's accuracy.
        seed: keyword-only; random seed.
        plot: keyword-only; PNG to write, or ``None``.
        progress: keyword-only; show the fit's progress bar.
        speed_annotations: keyword-only; annotations in the speed measurement.

    Returns:
        The table that is printed, one row per method (without the Bayesian model when
        its fit did not converge).
    """
    t_start = time.perf_counter()
    info = get_preset(preset)
    if not 0 <= delta < 0.99:
        raise ValueError(f"`--delta` must lie in [0, 0.99); got {delta}")
    key = jax.random.key(seed)
    k_truth, k_prop, k_check, k_sim, k_cal, k_fit = jax.random.split(key, 6)
    p = sample_ground_truth(k_truth, info, num_images=images, annotations_per_image=50)
    n, k = p.shape
    rho = propose(k_prop, p, accuracy=accuracy)
    print(
        f"cleverjax demo: {n} {info.name}-like images, {k} classes, proposer accuracy "
        f"{accuracy}; {len(jax.devices())} {jax.devices()[0].platform} device(s)\n"
    )
    print("1. SPA engine: share of annotations on the proposal, measured vs closed form")
    spa = spa_check(k_check, p, rho)
    with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
        print(spa.to_string(index=False))
    speed = engine_speed(jax.random.fold_in(k_check, 10**6), p, rho, annotations=speed_annotations)
    print(
        f"speed: {speed.annotations_per_s:.3g} annotations/s annotation by annotation "
        f"({speed.images} images x {speed.annotations_per_image} annotations, compiled, "
        f"median of {speed.repeats}); the count form costs O(classes) per image whatever "
        f"N is\n"
    )

    t0 = time.perf_counter()
    biased = jax.block_until_ready(
        simulate_counts(k_sim, p, rho, num_annotations=annotations, delta=delta)
    )
    t_sim = time.perf_counter() - t0
    cal = calibration_sample(k_cal, p, num_images=min(100, n), num_annotations=10)
    # Small bookkeeping in NumPy: each JAX operation run on its own compiles first.
    cal_rows, cal_counts = np.asarray(cal.indices), np.asarray(cal.counts)
    unbiased = np.zeros(biased.shape, np.int32)
    unbiased[cal_rows] = cal_counts
    print(
        f"2. Repair: true delta {delta}, {annotations} annotations with proposals per "
        f"image, 100 calibration images with 10 annotations without proposals"
    )

    t0 = time.perf_counter()
    matrix = estimate_class_matrix(cal.counts)
    raw = soft_labels(biased)
    bc = bias_correction(biased, rho)
    estimates = {
        "SPA (raw biased labels)": raw,
        "SPA + class blending": class_blending(raw, matrix),
        "SPA + bias correction": bc,
        "CleverLabel (delta = 0.1)": cleverlabel(biased, rho, matrix),
        "CleverLabel (true delta)": cleverlabel(biased, rho, matrix, delta=delta),
    }
    jax.block_until_ready(list(estimates.values()))
    t_clever = time.perf_counter() - t0
    biased_np, rho_np = np.asarray(biased), np.asarray(rho)
    regression = estimate_delta(cal_counts, biased_np[cal_rows], rho_np[cal_rows])
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        # The demo shows labels and delta, not per-image intervals: none are drawn.
        res = fit(
            k_fit,
            biased,
            rho,
            unbiased_counts=unbiased,
            num_ppc_replicates=20,
            num_interval_draws=0,
            progress=progress,
        )
    t_fit = time.perf_counter() - t0
    # Non-convergence is reported in the results below; other warnings pass on.
    not_converged = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if res.converged:
        estimates["Bayesian model (posterior mean)"] = res.posterior_mean

    rows = []
    for name, est in estimates.items():
        seconds = t_fit if name.startswith("Bayesian") else t_clever
        rows.append(
            {
                "method": name,
                "KL(truth || labels)": float(kl_divergence(p, est)),
                "seconds": seconds,
            }
        )
    table = pd.DataFrame(rows)
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print(table.to_string(index=False))
    lo, hi = res.delta_interval
    model = (
        f"{res.delta:.3f}, {100 * res.level:.0f}% interval [{lo:.3f}, {hi:.3f}]"
        if res.converged
        else "not shown (the fit did not converge)"
    )
    print(
        f"delta: true {delta:.3f} | regression on calibration images "
        f"{regression.delta:.3f} +- {regression.delta_se:.3f} (s.e.) | Bayesian model {model}"
    )
    if not res.converged:
        reason = (
            str(not_converged[0].message)
            if not_converged
            else f"SVI stopped at its step limit ({res.losses.shape[0]} steps)"
        )
        print(f"The Bayesian fit did not converge, so its labels and delta are left out: {reason}")
    elif res.ppc is not None:
        print(
            f"posterior predictive check of the acceptance rate: observed "
            f"{res.ppc.observed:.4f}, replicated "
            f"{float(np.mean(np.asarray(res.ppc.replicated))):.4f}, p = {res.ppc.p_value:.2f}"
        )
    print(
        f"time: simulation {t_sim:.2f} s, CleverLabel {t_clever:.2f} s, Bayesian fit "
        f"{t_fit:.1f} s, total {time.perf_counter() - t_start:.1f} s"
    )
    if plot:
        _plot(
            table,
            res if res.converged else None,
            delta,
            regression,
            plot,
            title=f"{info.name}-like, {n} images, N = {annotations}",
        )
        print(f"plot -> {plot}")
    return table


def spa_check(
    key,
    p,
    proposals,
    *,
    deltas: tuple[float, ...] = (0.1, 0.3, 0.6),
    annotations: tuple[int, ...] = (1, 10, 100),
    one_star: float = 0.99,
) -> pd.DataFrame:
    """Simulate every (delta, N) and compare the share of annotations on the proposal with
    its closed form, the mean acceptance probability A = delta + (1* - delta) p[rho]
    (a rejection never lands on the proposal). ``s.e.`` is the binomial standard error
    of the measured share, so |measured - expected| stays within a few of it. These calls
    are too small to time the engine; see :func:`engine_speed`."""
    rho = np.asarray(proposals)
    p_rho = np.take_along_axis(np.asarray(p, np.float64), rho[:, None], axis=1)[:, 0]
    rows = []
    for i, delta in enumerate(deltas):
        accept = delta + (one_star - delta) * p_rho
        for j, num in enumerate(annotations):
            sub = jax.random.fold_in(key, 1000 * i + j)
            counts = simulate_counts(
                sub, p, proposals, num_annotations=num, delta=delta, one_star=one_star
            )
            on_proposal = int(np.take_along_axis(np.asarray(counts), rho[:, None], axis=1).sum())
            total = num * p_rho.size
            rows.append(
                {
                    "delta": delta,
                    "N": num,
                    "annotations": total,
                    "measured": on_proposal / total,
                    "expected": float(accept.mean()),
                    "s.e.": float(np.sqrt(num * np.sum(accept * (1 - accept)))) / total,
                }
            )
    return pd.DataFrame(rows)


class EngineSpeed(NamedTuple):
    """The SPA engine's speed annotation by annotation, compilation excluded.

    Attributes:
        images: images simulated.
        annotations_per_image: annotations per image.
        annotations_per_s: annotations per second (median over repeats).
        repeats: timed calls.
    """

    images: int
    annotations_per_image: int
    annotations_per_s: float
    repeats: int


def engine_speed(
    key,
    p,
    proposals,
    *,
    annotations: int = SPEED_ANNOTATIONS,
    delta: float = 0.3,
    repeats: int = 3,
) -> EngineSpeed:
    """Time the per-annotation kernel (streamed into counts, so memory stays bounded) on
    the given images with enough annotations each that the call totals about
    ``annotations``; the first call compiles and is not timed."""
    n = int(p.shape[0])
    per_image = max(1, math.ceil(annotations / n))

    def run():
        return simulate_counts(
            key, p, proposals, num_annotations=per_image, delta=delta, method="annotations"
        )

    jax.block_until_ready(run())
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        runs.append(time.perf_counter() - t0)
    return EngineSpeed(n, per_image, n * per_image / float(np.median(runs)), repeats)


def _plot(table: pd.DataFrame, res, delta: float, regression, path: str, title: str) -> None:
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_kl, ax_delta = fig.subplots(1, 2, width_ratios=[1.6, 1])
    colors = ["tab:red", "tab:red", "tab:orange", "tab:blue", "tab:blue", "tab:green"]
    hatches = ["", "//", "", "", "//", ""]
    colors, hatches = colors[: len(table)], hatches[: len(table)]
    y = np.arange(len(table))
    ax_kl.barh(y, table["KL(truth || labels)"], color=colors, hatch=hatches, alpha=0.85)
    ax_kl.set_yticks(y, table["method"])
    ax_kl.invert_yaxis()
    ax_kl.set_xlabel("KL(truth || labels), lower is better")
    ax_kl.set_title("label quality")
    if res is not None:
        samples = np.asarray(res.delta_samples)
        ax_delta.hist(
            samples, bins=50, color="tab:green", alpha=0.6, density=True, label="model posterior"
        )
        ax_delta.axvspan(
            *res.delta_interval,
            color="tab:green",
            alpha=0.15,
            label=f"{100 * res.level:.0f}% interval",
        )
    ax_delta.axvline(delta, color="black", label="true delta")
    ax_delta.axvline(
        regression.delta, color="tab:purple", linestyle="--", label="regression estimate"
    )
    ax_delta.set_xlabel("delta")
    ax_delta.set_title("acceptance offset")
    ax_delta.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
