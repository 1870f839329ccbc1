"""Presets that mimic the ten datasets of the DCIC benchmark, so everything runs offline.

Facts per dataset (class names, image count, the class-blending matrix of the CleverLabel
reference implementation, and the delta of the paper's Table 1) are embedded below.
:func:`sample_ground_truth` draws label distributions whose class-conditional means follow
the class-blending matrix.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from ._random import as_typed_key, categorical


class Preset(NamedTuple):
    """Facts about one DCIC dataset.

    Attributes:
        name: dataset name as in the benchmark (e.g. ``"CIFAR10H"``).
        classes: class names, in index order.
        class_matrix: ``(classes, classes)`` class-blending matrix; row ``k`` is the mean
            soft label of images whose most likely class is ``k`` (rows renormalised).
        num_images: images in the dataset.
        delta: the delta the paper simulated with (Table 1).
        user_study_delta: delta measured in the paper's user study, where there was one.
    """

    name: str
    classes: tuple[str, ...]
    class_matrix: np.ndarray
    num_images: int
    delta: float
    user_study_delta: float | None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# Source: CleverLabel reference implementation (class-blending matrices) and the paper's
# Table 1 (deltas); image counts from the DCIC benchmark.
_DCIC = {
    "Benthic": dict(
        classes=(
            "coral",
            "crustacean",
            "cucumber",
            "encrusting",
            "other_fauna",
            "sponge",
            "star",
            "worm",
        ),
        num_images=4867,
        delta=0.4017,
        user_study_delta=None,
        class_matrix=(
            (0.814, 0.0, 0.0, 0.057, 0.114, 0.014, 0.0, 0.0),
            (0.043, 0.843, 0.0, 0.0, 0.114, 0.0, 0.0, 0.0),
            (0.0, 0.0, 0.9, 0.0, 0.1, 0.0, 0.0, 0.0),
            (0.024, 0.0, 0.0, 0.756, 0.04, 0.052, 0.0, 0.128),
            (0.021, 0.016, 0.0, 0.037, 0.805, 0.042, 0.0, 0.079),
            (0.0, 0.019, 0.0, 0.062, 0.044, 0.844, 0.025, 0.006),
            (0.0, 0.0, 0.0, 0.0, 0.03, 0.0, 0.97, 0.0),
            (0.017, 0.0, 0.017, 0.075, 0.058, 0.0, 0.0, 0.833),
        ),
    ),
    "CIFAR10H": dict(
        classes=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        num_images=10000,
        delta=0.0,
        user_study_delta=0.0973,
        class_matrix=(
            (0.95, 0.0, 0.0, 0.013, 0.0, 0.0, 0.0, 0.0, 0.037, 0.0),
            (0.0, 0.978, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.022),
            (0.0, 0.0, 0.925, 0.008, 0.033, 0.017, 0.0, 0.017, 0.0, 0.0),
            (0.0, 0.0, 0.008, 0.875, 0.017, 0.042, 0.042, 0.008, 0.0, 0.008),
            (0.0, 0.0, 0.0, 0.0, 0.929, 0.036, 0.0, 0.036, 0.0, 0.0),
            (0.0, 0.0, 0.0, 0.044, 0.0, 0.956, 0.0, 0.0, 0.0, 0.0),
            (0.0, 0.0, 0.017, 0.008, 0.0, 0.0, 0.975, 0.0, 0.0, 0.0),
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0),
            (0.008, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.977, 0.015),
            (0.014, 0.029, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.957),
        ),
    ),
    "MiceBone": dict(
        classes=("g", "nr", "ug"),
        num_images=7240,
        delta=0.4103,
        user_study_delta=0.3636,
        class_matrix=(
            (0.727, 0.18, 0.093),
            (0.033, 0.868, 0.099),
            (0.06, 0.167, 0.773),
        ),
    ),
    "Pig": dict(
        classes=("1_intact", "2_short", "3_fresh", "4_notVisible"),
        num_images=10237,
        delta=0.2572,
        user_study_delta=None,
        class_matrix=(
            (0.671, 0.16, 0.097, 0.071),
            (0.123, 0.65, 0.131, 0.096),
            (0.067, 0.153, 0.683, 0.097),
            (0.067, 0.156, 0.156, 0.622),
        ),
    ),
    "Plankton": dict(
        classes=(
            "bubbles",
            "collodaria_black",
            "collodaria_globule",
            "cop",
            "det",
            "no_fit",
            "phyto_puff",
            "phyto_tuft",
            "pro_rhizaria_phaeodaria",
            "shrimp",
        ),
        num_images=12280,
        delta=0.6481,
        user_study_delta=0.5784,
        class_matrix=(
            (0.95, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0),
            (0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            (0.0, 0.033, 0.9, 0.0, 0.0, 0.067, 0.0, 0.0, 0.0, 0.0),
            (0.0, 0.0, 0.0, 0.911, 0.0, 0.033, 0.0, 0.0, 0.0, 0.056),
            (0.033, 0.011, 0.0, 0.0, 0.8, 0.111, 0.0, 0.044, 0.0, 0.0),
            (0.0, 0.0, 0.0, 0.015, 0.021, 0.941, 0.0, 0.003, 0.009, 0.012),
            (0.0, 0.0, 0.0, 0.0, 0.025, 0.0, 0.9, 0.075, 0.0, 0.0),
            (0.013, 0.0, 0.0, 0.0, 0.031, 0.0, 0.006, 0.95, 0.0, 0.0),
            (0.0, 0.025, 0.008, 0.0, 0.008, 0.033, 0.0, 0.0, 0.925, 0.0),
            (0.0, 0.0, 0.0, 0.0, 0.017, 0.1, 0.0, 0.0, 0.0, 0.883),
        ),
    ),
    "QualityMRI": dict(
        classes=("0", "1"),
        num_images=310,
        delta=0.0,
        user_study_delta=None,
        class_matrix=(
            (0.696, 0.304),
            (0.24, 0.76),
        ),
    ),
    "Synthetic": dict(
        classes=("bc", "be", "gc", "ge", "rc", "re"),
        num_images=15000,
        delta=0.2608,
        user_study_delta=None,
        class_matrix=(
            (0.845, 0.075, 0.025, 0.025, 0.03, 0.0),
            (0.1, 0.767, 0.017, 0.05, 0.0, 0.067),
            (0.052, 0.012, 0.756, 0.104, 0.052, 0.024),
            (0.011, 0.061, 0.106, 0.761, 0.011, 0.05),
            (0.018, 0.018, 0.065, 0.006, 0.788, 0.106),
            (0.036, 0.021, 0.029, 0.029, 0.079, 0.807),
        ),
    ),
    "Treeversity#1": dict(
        classes=("bark", "bud", "flower", "fruit", "leaf", "whole_plant"),
        num_images=9489,
        delta=0.2608,
        user_study_delta=None,
        class_matrix=(
            (0.93, 0.0, 0.0, 0.0, 0.06, 0.01),
            (0.005, 0.819, 0.067, 0.067, 0.038, 0.005),
            (0.0, 0.034, 0.883, 0.046, 0.031, 0.006),
            (0.0, 0.05, 0.036, 0.836, 0.064, 0.014),
            (0.0, 0.033, 0.0, 0.033, 0.889, 0.044),
            (0.009, 0.009, 0.018, 0.0, 0.018, 0.945),
        ),
    ),
    "Treeversity#6": dict(
        classes=("bark", "bud", "flower", "fruit", "leaf", "whole_plant"),
        num_images=9826,
        delta=0.2067,
        user_study_delta=None,
        class_matrix=(
            (0.812, 0.025, 0.025, 0.0, 0.087, 0.05),
            (0.13, 0.61, 0.075, 0.035, 0.15, 0.0),
            (0.024, 0.11, 0.741, 0.014, 0.093, 0.017),
            (0.033, 0.042, 0.05, 0.7, 0.175, 0.0),
            (0.04, 0.104, 0.084, 0.06, 0.688, 0.024),
            (0.1, 0.0, 0.05, 0.017, 0.133, 0.7),
        ),
    ),
    "Turkey": dict(
        classes=("head_injury", "not_injured", "plumage_injury"),
        num_images=8040,
        delta=0.1417,
        user_study_delta=0.2164,
        class_matrix=(
            (0.833, 0.047, 0.12),
            (0.06, 0.78, 0.16),
            (0.012, 0.039, 0.949),
        ),
    ),
}


def _build(name: str, facts: dict) -> Preset:
    matrix = np.asarray(facts["class_matrix"], dtype=np.float64)
    return Preset(
        name=name,
        classes=tuple(facts["classes"]),
        class_matrix=matrix / matrix.sum(axis=1, keepdims=True),
        num_images=int(facts["num_images"]),
        delta=float(facts["delta"]),
        user_study_delta=facts["user_study_delta"],
    )


PRESETS: dict[str, Preset] = {name: _build(name, facts) for name, facts in _DCIC.items()}
"""All presets by name."""


def preset(name: str | Preset) -> Preset:
    """Look up a DCIC preset by name (case-insensitive; ``#`` may be omitted).

    Examples:
        >>> import cleverjax as cj
        >>> cj.preset("cifar10h").num_classes
        10
    """
    if isinstance(name, Preset):
        return name
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a preset name; got {type(name).__name__}")
    wanted = name.lower().replace("#", "")
    for key, value in PRESETS.items():
        if key.lower().replace("#", "") == wanted:
            return value
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def sample_ground_truth(
    key: PRNGKeyArray,
    name: str | Preset,
    *,
    num_images: int | None = None,
    concentration: float = 10.0,
    annotations_per_image: int | None = None,
) -> Float[Array, "images classes"]:
    """Ground-truth label distributions that mimic a DCIC dataset.

    Each image gets a class ``y`` uniformly at random and ``p ~ Dirichlet(concentration *
    C[y])``, where ``C`` is the preset's class-blending matrix, so class-conditional mean
    labels follow ``C``. With ``annotations_per_image`` the distributions are replaced by
    the empirical soft labels of that many unbiased annotations, as the benchmark's own
    ground truth is (many images then become unanimous).

    Args:
        key: PRNG key.
        name: preset name or :class:`Preset`.
        num_images: keyword-only; images to draw (default: the dataset's size).
        concentration: keyword-only; Dirichlet concentration (> 0); larger is less ambiguous.
        annotations_per_image: keyword-only; if given, return empirical soft labels.

    Returns:
        ``(images, classes)`` rows on the simplex.

    Examples:
        >>> import jax, cleverjax as cj
        >>> cj.sample_ground_truth(jax.random.key(0), "Turkey", num_images=5).shape
        (5, 3)
    """
    info = preset(name)
    n = info.num_images if num_images is None else num_images
    n = _checks.positive_int("num_images", n)
    if not concentration > 0:
        raise ValueError(f"`concentration` must be > 0; got {concentration}")
    if annotations_per_image is not None:
        _checks.positive_int("annotations_per_image", annotations_per_image)
    matrix = np.asarray(info.class_matrix, np.float64)
    return _ground_truth(as_typed_key(key), matrix, concentration, int(n), annotations_per_image)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _ground_truth(key, matrix, concentration, n: int, annotations_per_image: int | None):
    """The draws of :func:`sample_ground_truth` as one compiled program."""
    k_class, k_p, k_ann = jax.random.split(key, 3)
    dtype = jnp.result_type(float)
    num_classes = matrix.shape[0]
    matrix = matrix.astype(dtype)
    y = jax.random.randint(k_class, (n,), 0, num_classes)
    # A tiny floor keeps every Dirichlet parameter positive where C has exact zeros.
    alpha = concentration * matrix[y] + 1e-3
    p = jax.random.dirichlet(k_p, alpha, dtype=dtype)
    if annotations_per_image is None:
        return p
    draws = categorical(k_ann, jnp.log(p), shape=(annotations_per_image,))
    counts = jnp.sum(
        draws[..., None].astype(jnp.int32)
        == jnp.arange(num_classes, dtype=jnp.int32)[None, None, :],
        axis=0,
    )
    return counts.astype(dtype) / annotations_per_image
