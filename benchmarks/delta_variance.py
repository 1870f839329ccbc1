"""First-order variance of delta under the cut, against what ``cleverjax.fit`` reports.

Campaigns are drawn as ``benchmarks/coverage.py`` draws them (fresh images, proposals of
accuracy 0.85, N biased annotations, calibration images with 10 unbiased ones) and fitted
with the defaults. At each fit the cut's estimating equations are linearised (delta's
score on the calibration rows; the prior's score on every row, its hyperprior included),
with delta at its posterior mean:

- ``a``: delta's information on the calibration rows given the prior, what the exact
  posterior of delta given the fitted prior holds;
- ``q = c' H^-1 c``: the part of it that the prior's own estimation takes (``c``: the
  calibration rows' cross derivative in delta and the prior's parameters; ``H``: the
  prior's Hessian over every row, over its directions of clearly positive curvature:
  above the size of its most negative eigenvalue);
- ``r = c' H^-1 b``: the feedback through the other rows (``b``: their cross derivative),
  so that one cut round maps an error of delta to ``r / (a - q)`` times it and the
  widening is ``k = 1 / (1 - r / (a - q))``.

To first order delta's variance is ``k^2 / (a - q)``; the fit reports about
``k_measured^2 / a`` (``FitResult.delta_widening`` is measured by one more optimiser
round, not by these derivatives). Each campaign's line gives both widenings and the
factor ``sqrt(a / (a - q))`` by which the reported sd would still be short; each cell's
line their means. Runs in float64 (the fits too); a 528-parameter Hessian per campaign.

    python benchmarks/delta_variance.py --annotations 3 --deltas 0.1 0.5 --replicates 4
    python benchmarks/delta_variance.py --tiny      # a minute-long smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path
from unittest import mock

if __name__ == "__main__":
    import numpyro

    numpyro.set_host_device_count(os.cpu_count() or 1)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import cleverjax as cj  # noqa: E402
from cleverjax._bench import emit  # noqa: E402
from cleverjax.bayes import fitting  # noqa: E402
from cleverjax.bayes.data import SPAData, calibrated_rows  # noqa: E402
from cleverjax.bayes.likelihood import log_likelihood, table_log_weights  # noqa: E402
from cleverjax.bayes.model import (  # noqa: E402
    prior_from_params,
    row_average_labels,
    shrinkage_log_density,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage import DEFAULT_DATA, simulate_campaign, truth_source  # noqa: E402

ACCURACY = 0.85  # proposer accuracy, as coverage.py's default
PRIOR_PARAMS = ("prior_mean_logits", "prior_concentration", "prior_weight_logits")


def fit_with_inputs(key, biased, rho, unbiased):
    """``cj.fit`` with its defaults, and the data and model settings its optimiser saw
    (read by wrapping the private ``_lbfgs_fit`` for this one call)."""
    seen = {}
    inner = fitting._lbfgs_fit

    def recording(data, config, *args, **kwargs):
        seen.update(data=data, config=config)
        return inner(data, config, *args, **kwargs)

    with mock.patch.object(fitting, "_lbfgs_fit", recording):
        res = cj.fit(
            key, biased, rho, unbiased_counts=unbiased,
            num_interval_draws=0, num_ppc_replicates=0, check_model=False,
        )  # fmt: skip
    if not isinstance(seen.get("data"), SPAData):
        raise ValueError("one level of annotation counts expected (equal N for every image)")
    return res, seen["data"], seen["config"]


def decomposition(res, data: SPAData, config) -> dict:
    """``a``, ``q``, ``r`` (see the module doc) at the fit, and what follows from them."""
    theta, unravel = ravel_pytree({k: jnp.asarray(res.params[k]) for k in PRIOR_PARAMS})
    calibration = np.zeros(data.num_rows, bool)
    calibration[calibrated_rows(data)] = True
    target = row_average_labels(data, config.num_classes)

    def losses(delta, flat):
        params = {**res.params, **unravel(flat)}
        log_w = table_log_weights(data.table, delta, config.one_star, config.num_terms)
        ll = data.weight * log_likelihood(data, prior_from_params(params, config), log_w)
        on_cal = -jnp.sum(jnp.where(calibration, ll, 0.0))
        rest = -jnp.sum(jnp.where(calibration, 0.0, ll))
        if config.shrinkage > 0:
            rest = rest - shrinkage_log_density(
                params["prior_mean_logits"], target, config.shrinkage
            )
        return on_cal, rest

    def on_cal(d, f):
        return losses(d, f)[0]

    def rest(d, f):
        return losses(d, f)[1]

    def total(d, f):
        return sum(losses(d, f))

    delta = jnp.asarray(res.delta, theta.dtype)
    # Reverse over reverse: the likelihood's integral has a custom VJP (no forward mode).
    a = float(jax.grad(jax.grad(on_cal, 0), 0)(delta, theta))
    c = np.asarray(jax.jacrev(jax.grad(on_cal, 0), 1)(delta, theta))
    b = np.asarray(jax.jacrev(jax.grad(rest, 0), 1)(delta, theta))
    hess = np.asarray(jax.jacrev(jax.grad(total, 1), 1)(delta, theta))
    lam, vec = np.linalg.eigh((hess + hess.T) / 2)
    # Directions whose curvature is within the most negative eigenvalue's size are flat
    # at this point (redundant mixture components, the optimiser's tolerance): the data
    # do not identify them, and their tiny eigenvalues would only amplify noise.
    pos = lam > max(1e-8 * lam.max(), -lam.min())
    pc, pb = vec.T @ c, vec.T @ b
    q = float(np.sum(pc[pos] ** 2 / lam[pos]))
    r = float(np.sum(pc[pos] * pb[pos] / lam[pos]))
    return dict(
        a=a,
        q_over_a=q / a,
        slope_first_order=r / (a - q),
        widening_first_order=1 / (1 - r / (a - q)),
        prior_noise_factor=math.sqrt(a / (a - q)),
        flat_directions=int(np.sum(~pos)),
        negative_directions=int(np.sum(lam < 0)),
        parameters=int(lam.size),
        c_share_in_flat=float(np.sum(pc[~pos] ** 2) / np.sum(pc**2)),
    )


def campaign(key, truth, *, delta: float, num_annotations: int, calibration: int) -> dict:
    """One campaign drawn as ``coverage.py`` draws them, fitted, and its decomposition."""
    biased, rho, unbiased, k_fit = simulate_campaign(
        key, truth, delta=delta, num_annotations=num_annotations,
        num_calibration=calibration, accuracy=ACCURACY,
    )  # fmt: skip
    res, data, config = fit_with_inputs(k_fit, biased, rho, unbiased)
    sd = float(np.std(np.asarray(res.delta_samples)))
    return dict(
        estimate=res.delta,
        sd=sd,
        z=(res.delta - delta) / sd,
        widening_measured=res.delta_widening,
        **decomposition(res, data, config),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["diverse"])
    parser.add_argument("--annotations", nargs="+", type=int, default=[3])
    parser.add_argument("--deltas", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--calibration", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a minute-long smoke run")
    args = parser.parse_args()
    if args.tiny:
        args.datasets, args.annotations, args.deltas = ["Turkey"], [3], [0.3]
        args.replicates, args.images, args.calibration = 1, 200, 30
    warnings.simplefilter("ignore", cj.ConvergenceWarning)
    emit(case="setup", **{k: v for k, v in vars(args).items() if k != "tiny"})
    cells = []
    for name in args.datasets:
        truth, label, _ = truth_source(name, DEFAULT_DATA, args.images)
        for n in args.annotations:
            for delta in args.deltas:
                runs = []
                cell = jax.random.fold_in(jax.random.key(args.seed), 1000 * n + round(1000 * delta))
                for i in range(args.replicates):
                    run = campaign(
                        jax.random.fold_in(cell, i),
                        truth,
                        delta=delta,
                        num_annotations=n,
                        calibration=args.calibration,
                    )
                    runs.append(run)
                    emit(case="campaign", dataset=label, num_annotations=n, delta=delta, **run)
                mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
                cells.append(mean)
                emit(case="cell", dataset=label, num_annotations=n, delta=delta, mean=mean)
    emit(
        case="summary",
        cells=len(cells),
        prior_noise_factor_max=max(c["prior_noise_factor"] for c in cells),
        widening_gap_max=max(
            abs(c["widening_measured"] - c["widening_first_order"]) for c in cells
        ),
    )


if __name__ == "__main__":
    main()
