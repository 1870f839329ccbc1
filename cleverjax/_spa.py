"""SPA (Simulated Proposal Acceptance): the annotation model of CleverLabel's Algorithm 1.

An annotator shown image ``x`` with proposed class ``rho`` accepts the proposal with
probability ``A = delta + (one_star - delta) * p[rho]``; otherwise they pick a class
``k != rho`` with probability ``p[k] / (1 - p[rho])``. The biased label distribution is
``p_b = A * onehot(rho) + (1 - A) * r`` (see :func:`biased_distribution`).

Two simulators share this model:

* :func:`simulate_counts` draws the per-image counts, exactly Multinomial(N, p_b), in
  O(K) work per image whatever N is.
* :func:`simulate_annotations` draws annotation by annotation with one uniform each,
  as Algorithm 1 does, for annotator-level studies.

Both are pure functions of ``key``; an annotation's random number depends only on its
image index and its annotation index, so chunking and multi-device sharding of the image
axis never change the result, whether the devices belong to one process or to several
(:mod:`cleverjax.distributed`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from . import _checks
from ._checks import ArrayIn
from ._random import (
    KeyData,
    binomial,
    categorical,
    fold,
    key_data,
    multinomial,
    random_words,
    to_unit,
)

OnCertain = Literal["uniform", "lowest"]
"""What a rejection picks when ``p[rho] = 1``: ``"uniform"`` over the other classes
(default), or ``"lowest"``, the lowest-index other class (the reference implementation)."""

_ON_CERTAIN = ("uniform", "lowest")
_ALWAYS_UNIFORM = "always-uniform"
"""Internal rejection rule of ``rejection="uniform"``: uniform over the other classes
for every image, whatever ``p`` is."""
_STREAM_ANNOTATIONS = 0
_STREAM_ACCEPT = 1
_STREAM_REJECT = 2


class Annotators(eqx.Module):
    """A pool of simulated annotators, each with their own acceptance offset ``delta``.

    Annotation ``j`` of image ``i`` is made by annotator ``(i + j) % num_annotators``:
    every annotator works on every image position in turn, loads are balanced, and no
    annotator sees the same image twice while ``num_annotations <= num_annotators``.

    Attributes:
        delta: ``(annotators,)`` acceptance offsets, each in ``[0, one_star]``.

    Examples:
        >>> import jax, cleverjax as cj
        >>> pool = cj.Annotators.from_beta(jax.random.key(0), 20, mean=0.2, concentration=10.0)
        >>> pool.delta.shape
        (20,)
    """

    delta: Float[Array, " annotators"]

    def __init__(self, delta: ArrayIn):
        d = _checks.as_float_array("Annotators(delta=...)", delta, ndim=1)
        if d.shape[0] == 0:
            raise ValueError("`Annotators(delta=...)` needs at least one annotator; got 0")
        self.delta = _checks.check_range("Annotators(delta=...)", d, 0.0, 1.0)

    @property
    def num_annotators(self) -> int:
        return self.delta.shape[0]

    @classmethod
    def from_beta(
        cls, key: PRNGKeyArray, num_annotators: int, *, mean: float, concentration: float
    ) -> Annotators:
        """Draw ``num_annotators`` deltas from Beta(mean * c, (1 - mean) * c), c = concentration.

        Args:
            key: PRNG key.
            num_annotators: pool size (keyword-only arguments follow).
            mean: population mean of delta, in (0, 1).
            concentration: Beta concentration ``a + b`` (> 0); larger means more alike.
        """
        num_annotators = _checks.positive_int("num_annotators", num_annotators)
        if not 0 < mean < 1:
            raise ValueError(f"`mean` must lie in (0, 1); got {mean}")
        if not concentration > 0:
            raise ValueError(f"`concentration` must be > 0; got {concentration}")
        a = mean * concentration
        b = (1 - mean) * concentration
        return cls(jax.random.beta(key, a, b, (int(num_annotators),)))


class AnnotationBatch(NamedTuple):
    """Per-annotation output of :func:`simulate_annotations` (``return_details=True``).

    Attributes:
        labels: ``(images, slots)`` int32 labels; ``-1`` past an image's annotation count.
        accepted: ``(images, slots)`` bool, the annotator accepted the proposal.
        worker: ``(images, slots)`` int32 annotator ids (``-1`` past the count). With
            :class:`Annotators` the id is ``(i + j) % num_annotators``; otherwise each slot
            is its own annotator and the id is the slot index ``j``.
    """

    labels: Int[Array, "images slots"]
    accepted: Bool[Array, "images slots"]
    worker: Int[Array, "images slots"]


# ----------------------------------------------------------------------------------
# Core maths for one image (public wrappers vmap over images)
# ----------------------------------------------------------------------------------


def _acceptance(p_rho: Array, delta: Array, one_star: Array) -> Array:
    return delta + (one_star - delta) * p_rho


def _other_distribution(
    p: Float[Array, " K"], rho: Int[Array, ""], on_certain: str
) -> Float[Array, " K"]:
    """r[k] = p[k] / (1 - p[rho]) for k != rho, with the documented rule when p[rho] = 1."""
    num_classes = p.shape[-1]
    is_rho = jnp.arange(num_classes, dtype=jnp.int32) == rho
    others = jnp.where(is_rho, 0, p)
    mass = jnp.sum(others)
    uniform = jnp.where(is_rho, 0, 1).astype(p.dtype) / (num_classes - 1)
    if on_certain == _ALWAYS_UNIFORM:
        return uniform
    if on_certain == "uniform":
        fallback = uniform
    else:
        lowest = jnp.where(rho == 0, 1, 0)
        fallback = (jnp.arange(num_classes, dtype=jnp.int32) == lowest).astype(p.dtype)
    return jnp.where(mass > 0, others / jnp.where(mass > 0, mass, 1), fallback)


def _biased_one(p, rho, delta, one_star, on_certain):
    a = _acceptance(p[rho], delta, one_star)
    r = _other_distribution(p, rho, on_certain)
    onehot = (jnp.arange(p.shape[-1], dtype=jnp.int32) == rho).astype(p.dtype)
    return a * onehot + (1 - a) * r


# ----------------------------------------------------------------------------------
# Validation shared by the public wrappers
# ----------------------------------------------------------------------------------


class _Inputs(NamedTuple):
    p: Array
    proposals: Array
    delta: Array  # (n,) per image, or (m,) per annotator when pooled
    pooled: bool
    one_star: Array


def _validate_common(p, proposals, delta, one_star, on_certain) -> _Inputs:
    p = _checks.as_float_array("p", p, ndim=2)
    n, num_classes = p.shape
    if num_classes < 2:
        raise ValueError(f"`p` must have at least 2 classes (columns); got shape {p.shape}")
    p = _checks.check_simplex_rows("p", p)
    proposals = _checks.as_int_array("proposals", proposals, ndim=1)
    _checks.check_shape("proposals", proposals, (n,), hint="give one proposed class per image")
    proposals = _checks.check_labels("proposals", proposals, num_classes)
    _checks.check_choice("on_certain", on_certain, _ON_CERTAIN)
    one_star_a = _checks.as_float_array("one_star", one_star, ndim=0)
    one_star_a = _checks.check_range("one_star", one_star_a, 0.0, 1.0)
    if isinstance(delta, Annotators):
        d = delta.delta.astype(p.dtype)
        pooled = True
    else:
        d = _checks.as_float_array("delta", delta, ndim=(0, 1))
        if d.ndim == 1:
            _checks.check_shape(
                "delta", d, (n,), hint="give a scalar, one delta per image, or an Annotators pool"
            )
        d = jnp.broadcast_to(d, (n,))
        pooled = False
    d = _checks.check_range("delta", d, 0.0, one_star_a)
    return _Inputs(p, proposals, d, pooled, one_star_a)


def _validate_num_annotations(num_annotations, n: int) -> Array:
    num = _checks.as_int_array("num_annotations", num_annotations, ndim=(0, 1))
    if num.ndim == 1:
        _checks.check_shape(
            "num_annotations", num, (n,), hint="give one int, or one count per image"
        )
    num = _checks.check_range("num_annotations", num, 0, 2**31 - 1)
    return jnp.broadcast_to(num, (n,))


def _check_float_capacity(num: Array, dtype) -> None:
    """Counts are drawn in floating point: refuse counts the dtype cannot hold exactly."""
    limit = 2**24 if jnp.dtype(dtype) == jnp.float32 else 2**53
    if not _checks.is_traced(num) and num.size and int(jnp.max(num)) > limit:
        raise ValueError(
            f"`num_annotations` above {limit} per image needs float64: set "
            f"JAX_ENABLE_X64=1; got {int(jnp.max(num))}"
        )


# ----------------------------------------------------------------------------------
# Blocked (chunked and sharded) execution over the image axis
# ----------------------------------------------------------------------------------


def _devices(devices: Sequence[jax.Device] | None, *arrays) -> tuple[jax.Device, ...]:
    """The devices to shard the image axis over: those given, else every device of every
    process (``jax.devices()``; the local ones when there is a single process)."""
    if devices is not None:
        devs = tuple(devices)
        if not devs:
            raise ValueError("`devices` must name at least one device; got an empty sequence")
        return devs
    if any(_checks.is_traced(a) for a in arrays):
        return (jax.local_devices()[0],)  # inside a caller's transformation: it shards
    return tuple(jax.devices() if jax.process_count() > 1 else jax.local_devices())


def _for_devices(devices: tuple[jax.Device, ...], *arrays):
    """Inputs for a computation over ``devices``. When these span several processes,
    every process holds the (same) inputs in full: hand them over as host arrays, which
    jit places replicated, whatever local device they were committed to."""
    here = jax.process_index()
    if all(d.process_index == here for d in devices):
        return arrays
    return tuple(
        np.asarray(a) if isinstance(a, jax.Array) and a.is_fully_addressable else a for a in arrays
    )


def _run_blocked(fn, arrays: tuple[Array, ...], *, block: int, devices: tuple[jax.Device, ...]):
    """Apply ``fn(offset, *block_arrays)`` over image blocks: lax.map per device, shard_map
    across devices.

    Device d takes images ``[d * m, (d + 1) * m)``, ``m = ceil(n / devices)``, padded to
    whole blocks with copies of its first image (whose results are dropped). Padding each
    device's share, not the end of the array, keeps the result sharded like the images
    when the devices divide n: nothing is gathered, across hosts neither.
    """
    n = arrays[0].shape[0]
    num_dev = len(devices)
    per_dev = math.ceil(n / num_dev)
    block = max(1, min(block, per_dev))  # no padding beyond what n needs
    blocks_per_dev = max(1, math.ceil(per_dev / block))

    def layout(a):
        if num_dev * per_dev != n:
            filler = jnp.broadcast_to(a[:1], (num_dev * per_dev - n, *a.shape[1:]))
            a = jnp.concatenate([a, filler], axis=0)
        a = a.reshape(num_dev, per_dev, *a.shape[1:])
        if blocks_per_dev * block != per_dev:
            shape = (num_dev, blocks_per_dev * block - per_dev, *a.shape[2:])
            a = jnp.concatenate([a, jnp.broadcast_to(a[:, :1], shape)], axis=1)
        return a.reshape(num_dev * blocks_per_dev, block, *a.shape[2:])

    blocked = tuple(layout(a) for a in arrays)
    first = jnp.arange(num_dev, dtype=jnp.uint32) * jnp.uint32(per_dev)
    within = jnp.arange(blocks_per_dev, dtype=jnp.uint32) * jnp.uint32(block)
    offsets = (first[:, None] + within[None, :]).reshape(-1)

    def per_device(offs, *xs):
        return lax.map(lambda args: fn(args[0], *args[1:]), (offs, *xs))

    if num_dev == 1:
        out = per_device(offsets, *blocked)
    else:
        mesh = Mesh(np.array(devices), ("images",))
        spec = PartitionSpec("images")
        sharded = jax.shard_map(
            per_device, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False
        )
        put = functools.partial(jax.device_put, device=NamedSharding(mesh, spec))
        out = sharded(put(offsets), *(put(b) for b in blocked))

    def unlayout(o):
        o = o.reshape(num_dev, blocks_per_dev * block, *o.shape[2:])[:, :per_dev]
        return o.reshape(num_dev * per_dev, *o.shape[2:])[:n]

    return jax.tree.map(unlayout, out)


def _default_block(per_image_work: int) -> int:
    """Images per block so that a block's working set stays cache-sized."""
    target = 2**17 // max(per_image_work, 1)
    return int(min(max(2 ** int(math.log2(max(target, 1))), 64), 65536))


# ----------------------------------------------------------------------------------
# Per-annotation kernel
# ----------------------------------------------------------------------------------


class _Draws(NamedTuple):
    accepted: Array  # (b, w) bool, valid slots only
    v: Array  # (b, w) the conditional uniform that picks a rejection's class
    valid: Array  # (b, w) slot < num_annotations
    worker: Array  # (b, w) annotator ids


def _rejection_cdf(p: Array, rho: Array, on_certain: str) -> Array:
    """Per-image CDF of r, +inf from the last class with positive mass (so rounding in
    the CDF can never select a class of zero probability)."""
    num_classes = p.shape[1]
    r = jax.vmap(_other_distribution, in_axes=(0, 0, None))(p, rho, on_certain)
    last = num_classes - 1 - jnp.argmax((r > 0)[:, ::-1], axis=1).astype(jnp.int32)
    after = jnp.arange(num_classes, dtype=jnp.int32)[None, :] >= last[:, None]
    return jnp.where(after, jnp.inf, jnp.cumsum(r, axis=1))


def _annotation_draws(
    kd: KeyData,
    image,
    p_rho,
    delta,
    num,
    one_star,
    *,
    pooled: bool,
    num_pool: int,
    col0,
    width: int,
) -> _Draws:
    """One uniform per annotation slot in [col0, col0 + width): accept if u < A, else
    v = (u - A) / (1 - A) is again uniform. Slot j of image i uses word j % 2 of the
    Threefry block at counter (i, j // 2), whatever the chunking."""
    b = image.shape[0]
    slot = col0 + jnp.arange(width, dtype=jnp.int32)
    w0, w1 = random_words(kd, image[:, None], (slot[None, ::2] // 2).astype(jnp.uint32))
    u = to_unit(jnp.stack([w0, w1], axis=-1).reshape(b, width), p_rho.dtype)
    if pooled:
        first = (image % jnp.uint32(num_pool)).astype(jnp.int32)
        worker = (first[:, None] + slot[None, :]) % num_pool
        acc_prob = _acceptance(p_rho[:, None], delta[worker], one_star)
    else:
        worker = jnp.broadcast_to(slot[None, :], (b, width))
        acc_prob = _acceptance(p_rho, delta, one_star)[:, None]
    valid = slot[None, :] < num[:, None]
    v = (u - acc_prob) * (1 / jnp.where(acc_prob < 1, 1 - acc_prob, 1))
    return _Draws(valid & (u < acc_prob), v, valid, worker)


def _labels(draws: _Draws, cdf: Array, rho: Array) -> Array:
    """Inverse CDF: a rejection's class is the number of CDF steps at or below v."""
    other = jnp.zeros(draws.v.shape, jnp.int32)
    for k in range(cdf.shape[1] - 1):
        other = other + (draws.v >= cdf[:, k : k + 1]).astype(jnp.int32)
    return jnp.where(draws.valid, jnp.where(draws.accepted, rho[:, None], other), -1)


def _chunk_counts(draws: _Draws, cdf: Array, rho: Array) -> Array:
    """Per-class counts of a chunk without forming labels: a rejection's class exceeds k
    exactly when v >= cdf[k], so counts are differences of these tail counts."""
    b, num_classes = cdf.shape
    rejected = draws.valid & ~draws.accepted
    tails = [jnp.sum(rejected, axis=1, dtype=jnp.int32)]
    for k in range(num_classes - 1):
        tails.append(jnp.sum(rejected & (draws.v >= cdf[:, k : k + 1]), axis=1, dtype=jnp.int32))
    tails.append(jnp.zeros((b,), jnp.int32))
    tail = jnp.stack(tails, axis=1)
    counts = tail[:, :-1] - tail[:, 1:]
    on_rho = rho[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]
    accepted = jnp.sum(draws.accepted, axis=1, dtype=jnp.int32)
    return counts + jnp.where(on_rho, accepted[:, None], 0)


def _p_rho(p: Array, rho: Array) -> Array:
    return jnp.take_along_axis(p, rho[:, None], axis=1)[:, 0]


@functools.partial(
    jax.jit,
    static_argnames=("pooled", "num_pool", "on_certain", "width", "block", "devices", "details"),
)
def _annotations_core(
    kd,
    p,
    rho,
    delta,
    num,
    one_star,
    *,
    pooled,
    num_pool,
    on_certain,
    width,
    block,
    devices,
    details,
):
    kd = fold(kd, _STREAM_ANNOTATIONS)

    def fn(offset, p_b, rho_b, num_b, *d_b):
        image = offset + jnp.arange(p_b.shape[0], dtype=jnp.uint32)
        draws = _annotation_draws(
            kd,
            image,
            _p_rho(p_b, rho_b),
            delta if pooled else d_b[0],
            num_b,
            one_star,
            pooled=pooled,
            num_pool=num_pool,
            col0=0,
            width=width,
        )
        labels = _labels(draws, _rejection_cdf(p_b, rho_b, on_certain), rho_b)
        if not details:
            return labels
        return labels, draws.accepted, jnp.where(draws.valid, draws.worker, -1)

    arrays = (p, rho, num) if pooled else (p, rho, num, delta)
    return _run_blocked(fn, arrays, block=block, devices=devices)


_ANNOTATION_CHUNK = 128  # annotation slots per step when streaming counts


@functools.partial(
    jax.jit, static_argnames=("pooled", "num_pool", "on_certain", "block", "devices")
)
def _streamed_counts_core(
    kd, p, rho, delta, num, one_star, *, pooled, num_pool, on_certain, block, devices
):
    kd = fold(kd, _STREAM_ANNOTATIONS)

    def fn(offset, p_b, rho_b, num_b, *d_b):
        image = offset + jnp.arange(p_b.shape[0], dtype=jnp.uint32)
        p_rho = _p_rho(p_b, rho_b)
        cdf = _rejection_cdf(p_b, rho_b, on_certain)
        num_chunks = (jnp.max(num_b) + _ANNOTATION_CHUNK - 1) // _ANNOTATION_CHUNK

        def body(c, counts):
            draws = _annotation_draws(
                kd,
                image,
                p_rho,
                delta if pooled else d_b[0],
                num_b,
                one_star,
                pooled=pooled,
                num_pool=num_pool,
                col0=c * _ANNOTATION_CHUNK,
                width=_ANNOTATION_CHUNK,
            )
            return counts + _chunk_counts(draws, cdf, rho_b)

        return lax.fori_loop(0, num_chunks, body, jnp.zeros(p_b.shape, jnp.int32))

    arrays = (p, rho, num) if pooled else (p, rho, num, delta)
    return _run_blocked(fn, arrays, block=block, devices=devices)


# ----------------------------------------------------------------------------------
# Count form
# ----------------------------------------------------------------------------------


def _pool_share(image: Array, num: Array, num_pool: int) -> Array:
    """How many of image i's annotations annotator w makes under the (i + j) % m rule."""
    w = jnp.arange(num_pool, dtype=jnp.int32)
    first = (w[None, :] - (image % jnp.uint32(num_pool)).astype(jnp.int32)[:, None]) % num_pool
    return jnp.maximum(0, (num[:, None] - first + num_pool - 1) // num_pool)


def _count_block(
    kd: KeyData,
    offset,
    p,
    rho,
    delta,
    num,
    one_star,
    *,
    pooled: bool,
    num_pool: int,
    on_certain: str,
):
    b = p.shape[0]
    image = offset + jnp.arange(b, dtype=jnp.uint32)
    p_rho = _p_rho(p, rho)
    kd_acc = fold(kd, _STREAM_ACCEPT)
    if pooled:
        share = _pool_share(image, num, num_pool)

        def add_worker(total, xs):
            w, d_w = xs
            return total + binomial(
                fold(kd_acc, w), image, share[:, w], _acceptance(p_rho, d_w, one_star)
            ), None

        accepted, _ = lax.scan(
            add_worker, jnp.zeros((b,), jnp.int32), (jnp.arange(num_pool, dtype=jnp.int32), delta)
        )
    else:
        accepted = binomial(kd_acc, image, num, _acceptance(p_rho, delta, one_star))
    r = jax.vmap(_other_distribution, in_axes=(0, 0, None))(p, rho, on_certain)
    counts = multinomial(fold(kd, _STREAM_REJECT), image, num - accepted, r)
    onehot = rho[:, None] == jnp.arange(p.shape[1], dtype=jnp.int32)[None, :]
    return counts + jnp.where(onehot, accepted[:, None], 0)


@functools.partial(
    jax.jit, static_argnames=("pooled", "num_pool", "on_certain", "block", "devices")
)
def _counts_core(kd, p, rho, delta, num, one_star, *, pooled, num_pool, on_certain, block, devices):
    def fn(offset, p_b, rho_b, num_b, *d_b):
        d = delta if pooled else d_b[0]
        return _count_block(
            kd,
            offset,
            p_b,
            rho_b,
            d,
            num_b,
            one_star,
            pooled=pooled,
            num_pool=num_pool,
            on_certain=on_certain,
        )

    arrays = (p, rho, num) if pooled else (p, rho, num, delta)
    return _run_blocked(fn, arrays, block=block, devices=devices)


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------


def biased_distribution(
    p: ArrayIn,
    proposals: ArrayIn,
    *,
    delta: ArrayIn,
    one_star: ArrayIn = 0.99,
    on_certain: OnCertain = "uniform",
) -> Float[Array, "images classes"]:
    """The closed-form biased label distribution P(L_b = k) under SPA.

    ``p_b = A * onehot(rho) + (1 - A) * r`` with ``A = delta + (one_star - delta) * p[rho]``
    and ``r[k] = p[k] / (1 - p[rho])`` for ``k != rho``.

    Args:
        p: ``(images, classes)`` ground-truth label distributions (rows sum to 1 within
            1e-4; they are renormalised).
        proposals: ``(images,)`` proposed class shown with each image.
        delta: keyword-only; acceptance offset, a scalar or one per image, in ``[0, one_star]``.
        one_star: keyword-only; upper bound 1* of the acceptance probability, in ``[0, 1]``.
        on_certain: keyword-only; the rejection rule when ``p[rho] = 1``: ``"uniform"`` over
            the other classes (default) or ``"lowest"`` (the reference implementation).

    Returns:
        ``(images, classes)`` rows on the simplex.

    Raises:
        ValueError: if ``p`` is not a stack of probability rows, a proposal is outside
            ``[0, K)``, ``delta`` is outside ``[0, one_star]``, ``one_star`` is outside
            ``[0, 1]``, or shapes disagree.

    Examples:
        >>> import jax.numpy as jnp, cleverjax as cj
        >>> import numpy as np
        >>> p_b = cj.biased_distribution(jnp.array([[0.5, 0.5, 0.0]]), jnp.array([0]),
        ...                              delta=0.2, one_star=1.0)
        >>> np.round(np.asarray(p_b, float), 3).tolist()
        [[0.6, 0.4, 0.0]]

    References:
        Schmarje et al., "Label Smarter, Not Harder: CleverLabel for Faster Annotation of
        Ambiguous Image Classification with Higher Quality" (2023), Algorithm 1.
    """
    if isinstance(delta, Annotators):
        raise TypeError(
            "`delta` must be a scalar or one value per image here; the biased "
            "distribution of a pool depends on who annotates"
        )
    x = _validate_common(p, proposals, delta, one_star, on_certain)
    return jax.vmap(_biased_one, in_axes=(0, 0, 0, None, None))(
        x.p, x.proposals, x.delta, x.one_star, on_certain
    )


def simulate_counts(
    key: PRNGKeyArray,
    p: ArrayIn,
    proposals: ArrayIn,
    *,
    num_annotations: ArrayIn,
    delta: ArrayIn | Annotators,
    one_star: ArrayIn = 0.99,
    on_certain: OnCertain = "uniform",
    rejection: Literal["proportional", "uniform"] = "proportional",
    method: Literal["multinomial", "annotations"] = "multinomial",
    block_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Int[Array, "images classes"]:
    """Simulate the per-image label counts of SPA-biased annotation.

    With ``method="multinomial"`` (default) the counts are drawn as the count on the
    proposal, Binomial(N, A) (a sum of binomials for an :class:`Annotators` pool), then
    the rejections, Multinomial(N - count, r): exactly the distribution of Algorithm 1,
    in O(classes) work per image whatever N is. With ``method="annotations"`` every
    annotation is drawn as in :func:`simulate_annotations` (same key, same annotations)
    and summed in streamed chunks, so memory stays bounded for any N.

    Args:
        key: PRNG key (``jax.random.key``).
        p: ``(images, classes)`` ground-truth label distributions.
        proposals: ``(images,)`` proposed classes, e.g. from :func:`propose`.
        num_annotations: keyword-only; annotations per image N', one int or one per image.
        delta: keyword-only; a scalar, one per image, or an :class:`Annotators` pool.
        one_star: keyword-only; 1*, the upper bound of acceptance.
        on_certain: keyword-only; the rejection rule when ``p[rho] = 1``.
        rejection: keyword-only; ``"proportional"`` (SPA): a rejection picks class
            ``k != rho`` with probability ``p[k] / (1 - p[rho])``; ``"uniform"``: with
            probability ``1 / (K - 1)`` (annotators who do not follow SPA, for studies of
            misspecification; ``on_certain`` is then moot).
        method: keyword-only; ``"multinomial"`` or ``"annotations"``.
        block_size: keyword-only; images per chunk (default: sized to the cache).
        devices: keyword-only; devices to shard the image axis over (default: all
            devices of all processes, see :mod:`cleverjax.distributed`). The result does
            not depend on the number of devices or processes.

    Returns:
        ``(images, classes)`` int32 counts; row i sums to ``num_annotations[i]``. With
        several processes, a global array: :func:`cleverjax.distributed.gather` brings
        it to every process.

    Raises:
        ValueError: on invalid probabilities, proposals, delta, one_star or counts.

    Examples:
        >>> import jax, jax.numpy as jnp, cleverjax as cj
        >>> p = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
        >>> c = cj.simulate_counts(jax.random.key(0), p, jnp.array([0, 1]),
        ...                        num_annotations=1000, delta=0.3)
        >>> c.shape, c.sum(axis=1).tolist()
        ((2, 3), [1000, 1000])
    """
    kd = key_data(key)
    x = _validate_common(p, proposals, delta, one_star, on_certain)
    n = x.p.shape[0]
    num = _validate_num_annotations(num_annotations, n)
    _checks.check_choice("method", method, ("multinomial", "annotations"))
    _checks.check_choice("rejection", rejection, ("proportional", "uniform"))
    rule = _ALWAYS_UNIFORM if rejection == "uniform" else on_certain
    _check_float_capacity(num, x.p.dtype)
    if n == 0:
        return jnp.zeros(x.p.shape, jnp.int32)
    devs = _devices(devices, x.p, x.delta, num)
    pooled_size = x.delta.shape[0] if x.pooled else 0
    if method == "multinomial":
        block = block_size or 2048
        core = _counts_core
    else:
        block = block_size or _default_block(_ANNOTATION_CHUNK)
        core = _streamed_counts_core
    _check_block(block)
    return core(
        *_for_devices(devs, kd, x.p, x.proposals, x.delta, num, x.one_star),
        pooled=x.pooled,
        num_pool=pooled_size,
        on_certain=rule,
        block=block,
        devices=devs,
    )


def _check_block(block: int) -> None:
    _checks.positive_int("block_size", block)


def simulate_annotations(
    key: PRNGKeyArray,
    p: ArrayIn,
    proposals: ArrayIn,
    *,
    num_annotations: ArrayIn,
    delta: ArrayIn | Annotators,
    one_star: ArrayIn = 0.99,
    on_certain: OnCertain = "uniform",
    max_annotations: int | None = None,
    return_details: bool = False,
    block_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Int[Array, "images slots"] | AnnotationBatch:
    """Simulate SPA annotation by annotation, as Algorithm 1 does.

    Each annotation uses one uniform ``u``: the proposal is accepted if ``u < A``;
    otherwise ``(u - A) / (1 - A)``, again uniform, picks a class ``k != rho`` by inverse
    CDF on ``r``. Annotation ``j`` of image ``i`` depends on ``(key, i, j)`` only.

    Args:
        key: PRNG key.
        p: ``(images, classes)`` ground-truth label distributions.
        proposals: ``(images,)`` proposed classes.
        num_annotations: keyword-only; one int, or one per image.
        delta: keyword-only; a scalar, one per image, or an :class:`Annotators` pool.
        one_star: keyword-only; 1*.
        on_certain: keyword-only; the rejection rule when ``p[rho] = 1``.
        max_annotations: keyword-only; number of slots (columns); needed only when
            ``num_annotations`` is traced. Defaults to ``max(num_annotations)``.
        return_details: keyword-only; also return accepted flags and annotator ids.
        block_size: keyword-only; images per chunk.
        devices: keyword-only; devices to shard the image axis over (default: all
            devices of all processes).

    Returns:
        ``(images, slots)`` int32 labels, ``-1`` past an image's count; or an
        :class:`AnnotationBatch` when ``return_details``. With several processes, global
        arrays (see :func:`cleverjax.distributed.gather`).

    Examples:
        >>> import jax, jax.numpy as jnp, cleverjax as cj
        >>> labels = cj.simulate_annotations(jax.random.key(0), jnp.array([[0.5, 0.5]]),
        ...                                  jnp.array([1]), num_annotations=4, delta=0.1)
        >>> labels.shape, labels.dtype
        ((1, 4), dtype('int32'))
    """
    kd = key_data(key)
    x = _validate_common(p, proposals, delta, one_star, on_certain)
    n = x.p.shape[0]
    num = _validate_num_annotations(num_annotations, n)
    if max_annotations is None:
        if _checks.is_traced(num):
            raise ValueError(
                "`max_annotations` is needed when `num_annotations` is traced "
                "(inside jit or vmap); give the number of slots"
            )
        max_annotations = int(jnp.max(num)) if n else 0
    elif not _checks.is_traced(num) and n and int(jnp.max(num)) > max_annotations:
        raise ValueError(
            f"`max_annotations` must be at least max(num_annotations) = "
            f"{int(jnp.max(num))}; got {max_annotations}"
        )
    if not isinstance(max_annotations, (int, np.integer)) or max_annotations < 0:
        raise ValueError(f"`max_annotations` must be a non-negative int; got {max_annotations!r}")
    width = int(max_annotations) + (int(max_annotations) % 2)  # words come in pairs
    if n == 0 or width == 0:
        empty = jnp.zeros((n, int(max_annotations)), jnp.int32)
        out = AnnotationBatch(empty - 1, empty.astype(bool), empty - 1)
        return out if return_details else out.labels
    block = block_size or _default_block(width)
    _check_block(block)
    devs = _devices(devices, x.p, x.delta, num)
    out = _annotations_core(
        *_for_devices(devs, kd, x.p, x.proposals, x.delta, num, x.one_star),
        pooled=x.pooled,
        num_pool=x.delta.shape[0] if x.pooled else 0,
        on_certain=on_certain,
        width=width,
        block=block,
        devices=devs,
        details=bool(return_details),
    )
    m = int(max_annotations)
    if m != width:
        out = jax.tree.map(lambda o: o[:, :m], out)
    return AnnotationBatch(*out) if return_details else out


def propose(
    key: PRNGKeyArray,
    p: ArrayIn,
    *,
    accuracy: float,
    mistakes: Literal["uniform", "ground_truth"] = "uniform",
) -> Int[Array, " images"]:
    """Proposals from a simulated proposer that is right with probability ``accuracy``.

    "Right" means the most likely class of ``p`` (lowest index on ties). A wrong proposal
    is uniform over the other classes (``mistakes="uniform"``), or drawn from ``p`` without
    its most likely class (``mistakes="ground_truth"``, which confuses similar classes as a
    trained network does; uniform when that mass is zero).

    Args:
        key: PRNG key.
        p: ``(images, classes)`` ground-truth label distributions.
        accuracy: keyword-only; probability of proposing the most likely class, in [0, 1].
        mistakes: keyword-only; how a wrong proposal is chosen.

    Returns:
        ``(images,)`` int32 proposed classes.

    Examples:
        >>> import jax, jax.numpy as jnp, cleverjax as cj
        >>> cj.propose(jax.random.key(0), jnp.eye(3), accuracy=1.0).tolist()
        [0, 1, 2]
    """
    p = _checks.check_simplex_rows("p", _checks.as_float_array("p", p, ndim=2))
    n, num_classes = p.shape
    if num_classes < 2:
        raise ValueError(f"`p` must have at least 2 classes; got shape {p.shape}")
    acc = _checks.check_range(
        "accuracy", _checks.as_float_array("accuracy", accuracy, ndim=0), 0.0, 1.0
    )
    _checks.check_choice("mistakes", mistakes, ("uniform", "ground_truth"))
    return _propose(_as_key(key), p, acc, mistakes)


@functools.partial(jax.jit, static_argnums=(3,))
def _propose(key, p: Array, acc: Array, mistakes: str) -> Array:
    n, num_classes = p.shape
    k_right, k_wrong = jax.random.split(key)
    best = jnp.argmax(p, axis=1).astype(jnp.int32)
    right = jax.random.uniform(k_right, (n,), dtype=p.dtype) < acc
    is_best = jnp.arange(num_classes, dtype=jnp.int32)[None, :] == best[:, None]
    weights = jnp.where(is_best, 0, 1).astype(p.dtype)
    if mistakes == "ground_truth":
        mass = jnp.where(is_best, 0, p)
        weights = jnp.where(jnp.sum(mass, axis=1, keepdims=True) > 0, mass, weights)
    wrong = categorical(k_wrong, jnp.log(weights)).astype(jnp.int32)
    return jnp.where(right, best, wrong)


def _as_key(key) -> PRNGKeyArray:
    """A typed threefry key carrying the same words as ``key``."""
    return jax.random.wrap_key_data(key_data(key), impl="threefry2x32")


def simulate_sweep(
    key: PRNGKeyArray,
    p: ArrayIn,
    proposals: ArrayIn,
    *,
    delta: ArrayIn,
    num_annotations: ArrayIn,
    num_seeds: int = 1,
    one_star: ArrayIn = 0.99,
    on_certain: OnCertain = "uniform",
    block_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Int[Array, "deltas sizes seeds images classes"]:
    """Counts for a whole grid of (delta, num_annotations, seed) in one compiled call.

    Seed ``s`` uses ``fold_in(key, s)``; within a seed the same random numbers serve
    every delta and size (common random numbers), so differences between grid cells are
    not masked by simulation noise. Each cell is distributed as :func:`simulate_counts`
    (cell ``(d, m, s)`` equals ``simulate_counts(fold_in(key, s), ...)`` exactly).

    Args:
        key: PRNG key.
        p: ``(images, classes)`` ground-truth label distributions.
        proposals: ``(images,)`` proposed classes.
        delta: keyword-only; ``(deltas,)`` acceptance offsets.
        num_annotations: keyword-only; ``(sizes,)`` annotations per image.
        num_seeds: keyword-only; independent replicates.
        one_star: keyword-only; 1*.
        on_certain: keyword-only; the rejection rule when ``p[rho] = 1``.
        block_size: keyword-only; images per chunk (each computes the whole grid).
        devices: keyword-only; devices to shard the image axis over (default: all
            devices of all processes). The result does not depend on the devices.

    Returns:
        ``(deltas, sizes, seeds, images, classes)`` int32 counts.

    Examples:
        >>> import jax, jax.numpy as jnp, cleverjax as cj
        >>> c = cj.simulate_sweep(jax.random.key(0), jnp.array([[0.6, 0.4]]), jnp.array([0]),
        ...                       delta=jnp.array([0.1, 0.5]), num_annotations=jnp.array([1, 10]),
        ...                       num_seeds=3)
        >>> c.shape
        (2, 2, 3, 1, 2)
    """
    kd = key_data(key)
    deltas = _checks.as_float_array("delta", delta, ndim=1)
    sizes = _checks.as_int_array("num_annotations", num_annotations, ndim=1)
    num_seeds = _checks.positive_int("num_seeds", num_seeds)
    x = _validate_common(p, proposals, 0.0, one_star, on_certain)
    deltas = _checks.check_range("delta", deltas, 0.0, x.one_star)
    sizes = _checks.check_range("num_annotations", sizes, 0, 2**31 - 1)
    _check_float_capacity(sizes, x.p.dtype)
    cells = deltas.shape[0] * sizes.shape[0] * int(num_seeds)
    n, num_classes = x.p.shape
    if n == 0 or cells == 0:
        return jnp.zeros(
            (deltas.shape[0], sizes.shape[0], int(num_seeds), n, num_classes), jnp.int32
        )
    block = block_size or max(64, 2048 // cells)  # a block holds every cell of its images
    _check_block(block)
    devs = _devices(devices, x.p, deltas, sizes)
    return _sweep_core(
        *_for_devices(devs, kd, x.p, x.proposals, deltas, sizes, x.one_star),
        num_seeds=int(num_seeds),
        on_certain=on_certain,
        block=block,
        devices=devs,
    )


@functools.partial(jax.jit, static_argnames=("num_seeds", "on_certain", "block", "devices"))
def _sweep_core(kd, p, rho, deltas, sizes, one_star, *, num_seeds, on_certain, block, devices):
    seeds = jnp.arange(num_seeds, dtype=jnp.uint32)

    def fn(offset, p_b, rho_b):
        b = p_b.shape[0]

        def cell(seed, d, size):
            return _count_block(
                fold(kd, seed),
                offset,
                p_b,
                rho_b,
                jnp.broadcast_to(d, (b,)),
                jnp.broadcast_to(size, (b,)),
                one_star,
                pooled=False,
                num_pool=0,
                on_certain=on_certain,
            )

        over_seeds = jax.vmap(cell, in_axes=(0, None, None))
        over_sizes = jax.vmap(over_seeds, in_axes=(None, None, 0))
        grid = jax.vmap(over_sizes, in_axes=(None, 0, None))(seeds, deltas, sizes)
        return jnp.moveaxis(grid, 3, 0)  # images first, for the blocked runner

    out = _run_blocked(fn, (p, rho), block=block, devices=devices)
    return jnp.moveaxis(out, 0, 3)
