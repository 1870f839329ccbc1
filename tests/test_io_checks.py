"""The validation vocabulary of `cleverjax._checks`: one eager/traced branch, named checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cleverjax import _checks


@pytest.mark.parametrize(
    "check, good, bad, match",
    [
        (
            lambda x: _checks.unit_interval("p", x),
            [0.0, 1.0],
            [0.5, 1.5],
            r"`p` must lie in \[0, 1\]",
        ),
        (
            lambda x: _checks.in_range("d", x, 0.0, 1.0, hi_open=True),
            [0.0, 0.5],
            [0.5, 1.0],
            r"`d` must lie in \[0, 1\)",
        ),
        (
            lambda x: _checks.check_labels("y", x, 3),
            [0, 2],
            [0, 3],
            r"`y` must be class indices in \[0, 3\)",
        ),
    ],
)
def test_eager_and_traced_checks_agree(check, good, bad, match):
    np.testing.assert_array_equal(check(jnp.asarray(good)), good)
    np.testing.assert_array_equal(jax.jit(check)(jnp.asarray(good)), good)
    with pytest.raises(ValueError, match=match + r".*1 bad entry, first at index 1"):
        check(jnp.asarray(bad))
    # Under jit the check runs on the device; the host sees it through the callback.
    with pytest.raises((eqx.EquinoxRuntimeError, ValueError), match=match):
        jax.block_until_ready(jax.jit(check)(jnp.asarray(bad)))


def test_whole_numbers_and_simplex_rows_keep_their_messages():
    with pytest.raises(ValueError, match=r"`n` must hold whole numbers; got 1.5 \(1 bad entry"):
        _checks.as_int_array("n", np.array([1.0, 1.5]), ndim=1)
    with pytest.raises(ValueError, match=r"`p` rows must sum to 1 \(within 0.0001\); got row 1"):
        _checks.check_simplex_rows("p", jnp.asarray([[0.5, 0.5], [0.5, 0.6]]))


@pytest.mark.parametrize("value", [0, -3, 1.0, True, "2", None])
def test_positive_int_refuses_what_is_not_one(value):
    with pytest.raises(ValueError, match=rf"`n` must be a positive int; got {re_repr(value)}"):
        _checks.positive_int("n", value)
    assert _checks.positive_int("n", np.int64(3)) == 3  # negative control


def re_repr(value):
    import re

    return re.escape(repr(value))


def test_path_checks(tmp_path):
    with pytest.raises(TypeError, match=r"`where` must be a path \(str or os.PathLike\); got int"):
        _checks.as_path("where", 3)
    missing = _checks.as_path("where", tmp_path / "none.csv")
    with pytest.raises(FileNotFoundError, match="none.csv: no such file"):
        _checks.existing_file(missing, str(missing))
    with pytest.raises(ValueError, match="not a file"):
        _checks.existing_file(tmp_path, str(tmp_path))
    assert _checks.existing_path(tmp_path, str(tmp_path)) == tmp_path
