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
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array
from numpyro.distributions.transforms import biject_to
from numpyro.infer import SVI
from tqdm import tqdm

from .._programs import stored_call


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
        state: the optimiser's final state (L-BFGS: an :class:`LBFGSState`, to resume
            from), or ``None``.
    """

    params: dict
    losses: np.ndarray
    converged: bool
    step_seconds: float
    state: Any = None


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
            steps += len(out)
            bar.update(len(out))
            losses.append(out)
            if converged_fn(losses):
                converged = True
                break
    timed = seconds[1:] or seconds  # the first chunk compiles
    return state, np.concatenate(losses), converged, sum(timed) / (len(timed) * chunk)


class LBFGSState(NamedTuple):
    """State of :func:`run_lbfgs` (flat unconstrained parameters).

    Attributes:
        x: current point.
        value, grad: the objective and its gradient there.
        direction: search direction from ``x``.
        step: step length to try next along ``direction``.
        s, y: ``(memory, size)`` the last parameter and gradient differences (a ring).
        count: differences stored so far (the newest at ``(count - 1) % memory``).
        recent: ``(window,)`` the objective after each of the last ``window`` evaluations
            (a ring, ``inf`` before the first ones; in a resumed run, ``nan`` until its
            first evaluation fills it with the objective at the resumed point, see
            :func:`_plateau_track`).
        evals: evaluations since the run (or its resumption) began.
        done: the last ``window`` evaluations lowered the objective by less than the
            tolerance: later evaluations leave the state as it is.
    """

    x: Array
    value: Array
    grad: Array
    direction: Array
    step: Array
    s: Array
    y: Array
    count: Array
    recent: Array
    evals: Array
    done: Array


RESUMED_MIN_EVALS = 5
"""A resumed run (see :func:`run_lbfgs`) may stop after this many evaluations."""


def _plateau_track(state: LBFGSState, threshold: Array) -> LBFGSState:
    """Record the objective after an evaluation; ``done`` once it is less than
    ``threshold`` below its value ``window`` evaluations earlier.

    A resumed run (``recent`` all ``nan``) starts from a point where the optimiser had
    already converged on a slightly changed objective, with its curvature memory: there
    the first evaluation fills the ring with the objective at that point, so that after
    :data:`RESUMED_MIN_EVALS` evaluations the run is done if it has gained less than
    ``threshold`` since it began, instead of waiting a whole window. A step rejected in
    that first window although its direction promised more than ``threshold`` (the memory
    misled the line search: the objective may still have far to go) returns the run to
    the usual rule, a whole window from there; near the minimum, where rounding rejects
    steps that promise nothing, it does not."""
    window = state.recent.shape[0]
    recent = jnp.where(jnp.isnan(state.recent[0]), state.value, state.recent)
    since_resume = (state.evals < window) & jnp.all(jnp.isfinite(recent))
    promised = -jnp.dot(state.grad, state.direction)  # first-order gain of a unit step
    misled = (state.step < 1) & (promised > threshold)
    recent = jnp.where(since_resume & misled, jnp.inf, recent)
    slot = state.evals % window
    gain = recent[slot] - state.value  # inf until window evaluations ran (fresh runs)
    done = (gain < threshold) & (state.evals + 1 >= RESUMED_MIN_EVALS)
    return state._replace(
        recent=recent.at[slot].set(state.value),
        evals=state.evals + 1,
        done=state.done | done,
    )


def _lbfgs_direction(g: Array, s: Array, y: Array, count: Array) -> Array:
    """``-H g`` by the two-loop recursion over the stored differences; ``-g / |g|`` (a
    unit step) when there are none. The loops are scans, not unrolled: one copy of their
    body in the compiled program whatever the memory."""
    memory = s.shape[0]
    sy = jnp.sum(s * y, axis=1)
    rho = jnp.where(sy > 0, 1 / jnp.where(sy > 0, sy, 1.0), 0.0)
    slots = (count - 1 - jnp.arange(memory)) % memory  # newest first
    used = jnp.arange(memory) < count

    def newest_first(q, slot_used):
        k, use = slot_used
        a = jnp.where(use, rho[k] * jnp.dot(s[k], q), 0.0)
        return q - a * y[k], a

    q, alphas = jax.lax.scan(newest_first, g, (slots, used))
    newest = (count - 1) % memory
    yy = jnp.dot(y[newest], y[newest])
    gamma = jnp.where(
        count > 0,
        sy[newest] / jnp.where(yy > 0, yy, 1.0),
        1 / jnp.maximum(jnp.linalg.norm(g), 1e-30),
    )

    def oldest_first(r, slot_used_alpha):
        k, use, a = slot_used_alpha
        b = rho[k] * jnp.dot(y[k], r)
        return r + jnp.where(use, a - b, 0.0) * s[k], None

    r, _ = jax.lax.scan(oldest_first, gamma * q, (slots, used, alphas), reverse=True)
    return -r


def _lbfgs_evaluation(value_and_grad, state: LBFGSState) -> LBFGSState:
    """One evaluation of the objective: try ``x + step * direction``; accept it if it
    decreases the objective enough (Armijo), then update the memory and the direction;
    otherwise halve the step. One evaluation per call, so that the compiled program holds
    a single copy of the objective and its gradient."""
    trial = state.x + state.step * state.direction
    value, grad = value_and_grad(trial)
    slope = jnp.dot(state.grad, state.direction)
    ok = (
        jnp.isfinite(value)
        & jnp.all(jnp.isfinite(grad))
        & (value <= state.value + 1e-4 * state.step * slope)
    )
    ds, dy = trial - state.x, grad - state.grad
    store = ok & (jnp.dot(ds, dy) > 1e-10 * jnp.linalg.norm(ds) * jnp.linalg.norm(dy))
    slot = state.count % state.s.shape[0]
    s = jnp.where(store, state.s.at[slot].set(ds), state.s)
    y = jnp.where(store, state.y.at[slot].set(dy), state.y)
    count = state.count + store.astype(state.count.dtype)
    x = jnp.where(ok, trial, state.x)
    new_value = jnp.where(ok, value, state.value)
    new_grad = jnp.where(ok, grad, state.grad)
    direction = _lbfgs_direction(new_grad, s, y, count)
    steepest = -new_grad / jnp.maximum(jnp.linalg.norm(new_grad), 1e-30)
    # Restart from steepest descent when the direction does not descend (rounding, or a
    # poor memory), or after ten failed halvings along a quasi-Newton direction.
    restart = ~ok & (state.step < 2.0**-10) & (state.count > 0)
    fresh = (jnp.dot(direction, new_grad) >= 0) | restart
    count = jnp.where(fresh, 0, count)
    direction = jnp.where(fresh, steepest, direction)
    direction = jnp.where(ok | restart, direction, state.direction)
    step = jnp.where(ok | restart, 1.0, state.step * 0.5).astype(state.step.dtype)
    return state._replace(
        x=x, value=new_value, grad=new_grad, direction=direction, step=step, s=s, y=y, count=count
    )


PLATEAU_WINDOW = 10
"""Evaluations over which :func:`run_lbfgs` looks for a plateau of the objective."""


@functools.lru_cache(maxsize=32)
def _lbfgs_programs(loss, static, constraints, chunk: int, memory: int, options: tuple = ()):
    """Compiled programs of :func:`run_lbfgs` for one objective, made once, so that fits
    with the same model settings and padded shapes reuse them within a process
    (``options``: XLA compiler options as pairs, see :func:`cleverjax._cache.compile_options`)."""
    jit = functools.partial(jax.jit, compiler_options=dict(options) or None)
    transforms = {name: biject_to(c) for name, c in constraints(static).items()}

    def constrain(u):
        return {name: transforms[name](v) for name, v in u.items()}

    def unconstrain(params):
        return {name: transforms[name].inv(v) for name, v in params.items()}

    @jit
    def start(params):
        # The first evaluation "accepts" the starting point itself (any value beats an
        # infinite one), so that the objective is compiled in one program only.
        x, _ = ravel_pytree(unconstrain(params))
        zeros = jnp.zeros((memory, x.shape[0]), x.dtype)
        inf = jnp.full((), jnp.inf, x.dtype)
        return LBFGSState(
            x, inf, jnp.zeros_like(x), jnp.zeros_like(x), jnp.ones((), x.dtype), zeros, zeros,
            jnp.zeros((), jnp.int32), jnp.full((PLATEAU_WINDOW,), jnp.inf, x.dtype),
            jnp.zeros((), jnp.int32), jnp.zeros((), bool),
        )  # fmt: skip

    @jit
    def run_chunk(state, params, args, threshold):
        _, unravel = ravel_pytree(unconstrain(params))
        value_and_grad = jax.value_and_grad(lambda x: loss(constrain(unravel(x)), *args, static))

        def body(st, _):
            # Once done, the state stays where it is; the evaluation still runs (a
            # ``lax.cond`` around it copies the data into the branch at every step and
            # costs more than the few evaluations it would skip).
            new = _plateau_track(_lbfgs_evaluation(value_and_grad, st), threshold)
            ran = ~st.done
            st = jax.tree.map(lambda a, b: jnp.where(st.done, a, b), st, new)
            return st, (st.value, ran)

        return jax.lax.scan(body, state, None, length=chunk)

    @jit
    def params_at(x, params):
        _, unravel = ravel_pytree(unconstrain(params))
        return constrain(unravel(x))

    # The largest program of a fit: kept on disk with its traced form (see _programs),
    # when its functions are named module-level ones (a closure's name does not tell
    # apart the values it captured).
    names = _module_level_name(loss), _module_level_name(constraints)
    if None in names:
        return start, run_chunk, params_at
    key = (*names, static, chunk, memory)
    stored_chunk = functools.partial(
        stored_call, run_chunk, name="lbfgs_chunk", key=key, options=options
    )
    return start, stored_chunk, params_at


def _module_level_name(fn) -> str | None:
    """``module.name`` of a function defined at a module's top level, else ``None``."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not (module and name) or "<" in name or "." in name:
        return None
    return f"{module}.{name}"


def run_lbfgs(
    loss,
    params: dict,
    constraints,
    args: tuple,
    static,
    *,
    max_steps: int,
    tolerance: float,
    scale: float,
    chunk: int = 5,
    memory: int = 10,
    resume: LBFGSState | None = None,
    progress: bool = False,
    options: tuple = (),
) -> Optimized:
    """Minimise ``loss(params, *args, static)`` (deterministic and smooth, e.g.
    :func:`cleverjax.bayes.model.negative_elbo`) over the parameters, each mapped to the
    reals through its NumPyro constraint (``constraints(static)``: parameter names to
    constraints), by L-BFGS with a backtracking (Armijo)
    line search. ``loss``, ``static`` (hashable settings) and ``constraints`` key the
    compiled programs,
    which later fits with the same settings and shapes reuse.

    ``max_steps`` counts evaluations of the objective; converged when the last
    :data:`PLATEAU_WINDOW` evaluations lowered it by less than ``tolerance * scale`` nats
    (``scale``: the number of images, so that the tolerance is per image). The rule is
    checked after every evaluation on the device, which keeps the point where it first
    held; the run stops at the end of that chunk of ``chunk`` evaluations.

    ``resume``: the final state of an earlier run (``Optimized.state``) on a changed
    objective with the same parameters: the run starts at ``params`` (its end point, or
    that point moved by the caller) with its curvature memory, re-evaluating the
    objective there first, and converges once it has gained less than the tolerance
    since then, after :data:`RESUMED_MIN_EVALS` evaluations or more.

    ``options``: XLA compiler options for the programs, as pairs
    (:func:`cleverjax._cache.compile_options`).
    """
    hint = "Check the data (a NaN or infinite weight or count?)"
    start, run_chunk, params_at = _lbfgs_programs(loss, static, constraints, chunk, memory, options)
    if resume is None:
        with lenient_promotion():
            state = start(params)
    else:  # a zero step "accepts" the given point under the new objective
        dtype = resume.value.dtype
        with lenient_promotion():
            x = start(params).x
        state = resume._replace(
            x=x,
            value=np.asarray(np.inf, dtype),
            step=np.zeros((), dtype),
            recent=np.full(resume.recent.shape, np.nan, dtype),
            evals=np.zeros((), np.int32),
            done=np.zeros((), bool),
        )
    # Placed where the data are, as the chunks' outputs will be: inputs that move from
    # uncommitted to committed between calls would compile the chunk program twice.
    sharding = jax.tree.leaves(args)[0].sharding
    state, params, args = jax.device_put((state, params, args), sharding)

    threshold = np.asarray(tolerance * scale, state.value.dtype)
    done = [False]

    def chunk_fn(st):
        st, (values, ran) = run_chunk(st, params, args, threshold)
        done[0] = bool(st.done)
        return st, np.asarray(values)[np.asarray(ran)]

    state, losses, converged, step_seconds = _run_chunks(
        chunk_fn,
        state,
        max_steps=max_steps,
        chunk=chunk,
        converged_fn=lambda losses: done[0],
        progress=progress,
        hint=hint,
    )
    if not converged:
        _warn_unconverged(max_steps, "raise `max_steps`")
    with lenient_promotion():
        fitted = params_at(state.x, params)
    return Optimized(fitted, losses, converged, step_seconds, state)


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
