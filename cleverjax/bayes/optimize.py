"""Optimisation of the model's global parameters: full-batch L-BFGS on the deterministic
quadrature ELBO (the default), or first-order SVI steps with any optax transformation.

Both run in compiled chunks of iterations with a convergence check between chunks, stop
with a :class:`ConvergenceWarning` when the budget runs out, and raise
``FloatingPointError`` instead of returning a number from a diverged fit.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from numpyro.infer import SVI
from tqdm import tqdm


class ConvergenceWarning(UserWarning):
    """The optimiser stopped at ``max_steps`` before the objective reached a plateau."""


class Optimized(NamedTuple):
    """Result of an optimisation run.

    Attributes:
        params: fitted parameters (constrained, NumPyro names).
        losses: ``(steps,)`` the objective (negative ELBO) after every step.
        converged: whether the plateau rule stopped the run before ``max_steps``.
        step_seconds: wall time of one step after compilation (the mean over every chunk
            after the first; the first chunk's, compilation included, when it stopped
            there).
    """

    params: dict
    losses: np.ndarray
    converged: bool
    step_seconds: float


def lenient_promotion():
    """NumPyro and optax internals rely on NumPy's implicit rank and dtype promotion; run
    them under JAX's standard rules even when a caller (e.g. a strict test suite) has
    asked for stricter ones."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    return stack


def plateau(previous: np.ndarray, last: np.ndarray, tolerance: float) -> bool:
    """Plateau of a noisy objective: the mean loss of the last window improved on the
    window before by less than ``tolerance`` nats, or by less than twice the standard
    error of that difference (the noise level estimated from successive differences,
    which ignores a smooth trend)."""
    gain = previous.mean() - last.mean()
    noise_var = 0.5 * np.var(np.diff(np.concatenate([previous, last])))
    se = math.sqrt(2 * noise_var / len(last))
    return bool(gain < max(2 * se, tolerance))


def _check_finite(chunk: np.ndarray, done: int, hint: str) -> None:
    if not np.all(np.isfinite(chunk)):
        bad = done + int(np.argmax(~np.isfinite(chunk)))
        raise FloatingPointError(
            f"the fit diverged: the loss became {chunk[~np.isfinite(chunk)][0]} at step "
            f"{bad}. {hint}"
        )


def _warn_unconverged(max_steps: int, hint: str) -> None:
    warnings.warn(
        f"the optimiser reached max_steps={max_steps} before the objective plateaued; {hint}",
        ConvergenceWarning,
        stacklevel=4,
    )


def _run_chunks(run_chunk, state, *, max_steps: int, chunk: int, converged_fn, progress, hint):
    """Call ``run_chunk(state) -> (state, losses)`` until ``converged_fn(losses so far)``
    or ``max_steps``; return the final state, all losses, convergence and step time."""
    losses, seconds = [], []
    converged = False
    steps = 0
    with tqdm(total=max_steps, desc="fit", disable=not progress, leave=False) as bar:
        while steps < max_steps:
            t0 = time.perf_counter()
            with lenient_promotion():
                state, out = run_chunk(state)
            out = np.asarray(out)  # waits for the chunk
            seconds.append(time.perf_counter() - t0)
            _check_finite(out, steps, hint)
            steps += chunk
            bar.update(chunk)
            losses.append(out)
            if converged_fn(losses):
                converged = True
                break
    timed = seconds[1:] or seconds  # the first chunk compiles
    return state, np.concatenate(losses), converged, sum(timed) / (len(timed) * chunk)


@functools.lru_cache(maxsize=32)
def _lbfgs_programs(svi: SVI, chunk: int):
    """Compiled programs of :func:`run_lbfgs` for one SVI object, made once, so that fits
    with the same model settings and padded shapes reuse them within a process."""
    opt = optax.lbfgs()

    def objective(u, key, a, kw):
        return svi.loss.loss(
            key, svi.constrain_fn(u), svi.model, svi.guide, *a, **kw, **svi.static_kwargs
        )

    @jax.jit
    def start(key, a, kw):
        state = svi.init(key, *a, **kw)
        u = svi.optim.get_params(state.optim_state)
        return u, opt.init(u)

    @jax.jit
    def run_chunk(carry, key, a, kw):
        def f(u):
            return objective(u, key, a, kw)

        value_and_grad = optax.value_and_grad_from_state(f)

        def body(c, _):
            u, st = c
            value, grad = value_and_grad(u, state=st)
            updates, st = opt.update(grad, st, u, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(u, updates), st), value

        return jax.lax.scan(body, carry, None, length=chunk)

    return start, run_chunk, jax.jit(lambda u: svi.constrain_fn(u))


def run_lbfgs(
    svi: SVI,
    key,
    args: tuple,
    kwargs: dict,
    *,
    max_steps: int,
    tolerance: float,
    scale: float,
    chunk: int = 10,
    progress: bool = False,
) -> Optimized:
    """Minimise SVI's loss (which must be deterministic, e.g. the quadrature ELBO) over the
    unconstrained parameters with optax's L-BFGS and zoom line search.

    Converged when a chunk of ``chunk`` iterations lowered the loss by less than
    ``tolerance * scale`` nats (``scale``: the number of images, so the tolerance is per
    image).
    """
    start, run_chunk, constrain = _lbfgs_programs(svi, chunk)
    with lenient_promotion():
        carry = start(key, args, kwargs)

    def converged_fn(losses):
        if len(losses) < 2:
            return False
        return bool(losses[-2][-1] - losses[-1][-1] < tolerance * scale)

    carry, losses, converged, step_seconds = _run_chunks(
        lambda c: run_chunk(c, key, args, kwargs),
        carry,
        max_steps=max_steps,
        chunk=chunk,
        converged_fn=converged_fn,
        progress=progress,
        hint="Check the data, or pass an optax optimizer with a small learning rate",
    )
    if not converged:
        _warn_unconverged(max_steps, "raise `max_steps`")
    with lenient_promotion():
        params = constrain(carry[0])
    return Optimized(params, losses, converged, step_seconds)


def run_svi(
    svi: SVI,
    key,
    args: tuple,
    kwargs: dict,
    *,
    max_steps: int,
    tolerance: float,
    scale: float,
    chunk: int = 250,
    progress: bool = False,
) -> Optimized:
    """First-order SVI steps with ``svi``'s optax transformation until the (possibly noisy)
    ELBO plateaus (see :func:`plateau`)."""
    # Traced once as a whole: run eagerly, every small operation would compile on its own.
    # Data are arguments, never constants baked into the program (they may be sharded).
    with lenient_promotion():
        state = jax.jit(lambda k, a, kw: svi.init(k, *a, **kw))(key, args, kwargs)

    @jax.jit
    def run_chunk(state, a, kw):
        def body(st, _):
            return svi.update(st, *a, **kw)

        return jax.lax.scan(body, state, None, length=chunk)

    def converged_fn(losses):
        return len(losses) >= 3 and plateau(losses[-2], losses[-1], tolerance * scale)

    state, losses, converged, step_seconds = _run_chunks(
        lambda st: run_chunk(st, args, kwargs),
        state,
        max_steps=max_steps,
        chunk=chunk,
        converged_fn=converged_fn,
        progress=progress,
        hint="Lower the optimizer's learning rate or check the data",
    )
    if not converged:
        _warn_unconverged(max_steps, "raise `max_steps` or the learning rate")
    return Optimized(svi.get_params(state), losses, converged, step_seconds)


def default_adam(learning_rate: float = 0.2, decay_steps: int = 300) -> Any:
    """Adam with an exponential learning-rate decay (halving every ``decay_steps`` steps,
    down to ``learning_rate / 200``): the first-order optimiser of cleverjax 0.1."""
    schedule = optax.exponential_decay(
        learning_rate, transition_steps=decay_steps, decay_rate=0.5, end_value=learning_rate / 200
    )
    return optax.adam(schedule)
