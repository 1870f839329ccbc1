"""Docstring examples of the `cleverjax.io` submodules run as written."""

import doctest
import importlib
import pkgutil

import pytest

import cleverjax.io

MODULES = sorted(m.name for m in pkgutil.iter_modules(cleverjax.io.__path__, "cleverjax.io."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
