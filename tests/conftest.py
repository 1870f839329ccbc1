"""Test configuration: strict JAX promotion rules and the ``getkey`` fixture."""

import itertools
import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = Path(
    os.environ.get("CLEVERJAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
CIFAR10H_COUNTS = SHARED_DATA / "cifar10h" / "cifar10h-counts.npy"


@pytest.fixture
def getkey():
    """A fresh key on every call, folded from a counter into a fixed seed (as equinox does)."""
    base = jax.random.key(5678)
    counter = itertools.count()

    def _getkey():
        return jax.random.fold_in(base, next(counter))

    return _getkey


@pytest.fixture
def cifar10h_counts():
    """CIFAR-10H human label counts from the shared data folder; skip when absent."""
    if not CIFAR10H_COUNTS.exists():
        pytest.skip(f"CIFAR-10H counts not found at {CIFAR10H_COUNTS}")
    import numpy as np

    return np.load(CIFAR10H_COUNTS)


@pytest.fixture
def no_typecheck():
    """Let invalid arguments reach the library's own checks (tests type-check calls)."""
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)
