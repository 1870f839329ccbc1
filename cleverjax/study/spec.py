"""Study files: parse a TOML study, check every key and value, resolve the ground truths.

A study file declares a grid (deltas x annotation counts x calibration settings x seeds)
over one or more ground truths, and the methods to score on every cell. Every check runs
before anything is written, and every error is one line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .._experiments import _ALL_METHODS

METHODS = (*_ALL_METHODS, "Bayes")
"""Methods a study can score: Figure 3a's, Table 2's CB with mu = 0.25, and the model."""

_BAYES_OPTIONS: dict[str, tuple[type, ...]] = {
    "max_steps": (int,),
    "learning_rate": (float, int),
    "decay_steps": (int,),
    "check_every": (int,),
    "tolerance": (float, int),
    "num_components": (int,),
    "spikes": (bool,),
    "delta_from": (str,),
    "level": (float,),
    "num_draws": (int,),
    "num_interval_draws": (int,),
}
# Method options: `CleverLabel.delta` is the delta BC assumes (SPA+BC and CleverLabel).
OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "CleverLabel": {"delta": (float, int)},
    "Bayes": _BAYES_OPTIONS,
}

_REQUIRED = ("truth", "deltas", "annotations", "seeds", "methods")
_DEFAULTS: dict[str, Any] = {
    "accuracy": 0.9,
    "calibration_images": [100],
    "calibration_annotations": [10],
    "one_star": 0.99,
    "mu": 0.75,
    "options": {},
}
_PRESET_KEYS = ("preset", "images", "seed", "annotations", "name")
_COUNTS_KEYS = ("counts", "name")


class StudyError(ValueError):
    """A study file or study folder that cannot be used; the message is one line."""


class Truth(NamedTuple):
    """One resolved ground truth of a study.

    Attributes:
        name: label of the truth in tables and plots (preset name or counts file stem).
        p: ``(images, classes)`` label distributions.
        digest: SHA-256 of ``p``'s bytes: the truth's identity in cell ids.
    """

    name: str
    p: np.ndarray
    digest: str


class Study(NamedTuple):
    """A checked study: the grid, the scalar settings and the resolved truths.

    Attributes:
        source: the study file (or a name for a built-in study).
        truths: ground truths, in file order.
        deltas: true acceptance offsets.
        annotations: annotations per image N.
        calibration_images: calibration images for the class-blending matrix (and the
            model's unbiased rows).
        calibration_annotations: unbiased annotations per calibration image.
        seeds: replicate seeds; a cell's randomness derives from its seed and settings.
        methods: methods to score, in plotting order.
        accuracy: proposer accuracy.
        one_star: 1*, used to simulate and to correct.
        mu: CB weight.
        options: method options (see :data:`OPTIONS`), as a JSON-ready mapping.
    """

    source: str
    truths: tuple[Truth, ...]
    deltas: tuple[float, ...]
    annotations: tuple[int, ...]
    calibration_images: tuple[int, ...]
    calibration_annotations: tuple[int, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    accuracy: float
    one_star: float
    mu: float
    options: Mapping[str, Mapping[str, Any]]

    def normalised(self) -> dict[str, Any]:
        """The study as plain JSON data, truths by name, size and content digest."""
        return {
            "truths": [
                {"name": t.name, "shape": list(t.p.shape), "sha256": t.digest} for t in self.truths
            ],
            "deltas": list(self.deltas),
            "annotations": list(self.annotations),
            "calibration_images": list(self.calibration_images),
            "calibration_annotations": list(self.calibration_annotations),
            "seeds": list(self.seeds),
            "methods": list(self.methods),
            "accuracy": self.accuracy,
            "one_star": self.one_star,
            "mu": self.mu,
            "options": {m: dict(sorted(o.items())) for m, o in sorted(self.options.items())},
        }

    def digest(self) -> str:
        """SHA-256 of the normalised study: equal for files that differ only in layout."""
        return _sha(json.dumps(self.normalised(), sort_keys=True))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _kind(types: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


class _Checker:
    """Checks values of one study file; every error names the file and the key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> StudyError:
        return StudyError(f"{self.source}: key `{key}`: {message}")

    def scalar(self, key: str, value: Any, types: tuple[type, ...]) -> Any:
        # TOML booleans are Python ints: accept them only where a boolean is expected.
        ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        if not ok:
            raise self.fail(key, f"expected {_kind(types)}; got {value!r}")
        return float(value) if float in types and not isinstance(value, bool) else value

    def number(self, key: str, value: Any, lo: float, hi: float) -> float:
        x = self.scalar(key, value, (float, int))
        if not lo <= x <= hi:
            raise self.fail(key, f"expected a number in [{lo:g}, {hi:g}]; got {value!r}")
        return x

    def integers(self, key: str, value: Any, lo: int, *, scalar_ok: bool = False) -> tuple:
        if scalar_ok and not isinstance(value, list):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of integers >= {lo}; got {value!r}")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2**31:
                raise self.fail(key, f"expected integers in [{lo}, 2^31); got {v!r}")
            out.append(v)
        return self.distinct(key, out)

    def distinct(self, key: str, values: list) -> tuple:
        if not values:
            raise self.fail(key, "the grid axis is empty; give at least one value")
        seen = [v for i, v in enumerate(values) if v in values[:i]]
        if seen:
            raise self.fail(key, f"values must be distinct; {seen[0]!r} appears twice")
        return tuple(values)

    def table(self, key: str, value: Any, allowed: Sequence[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table; got {value!r}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise self.fail(
                f"{key}.{unknown[0]}", f"unknown key; allowed keys are {', '.join(allowed)}"
            )
        return value


def _read_counts(check: _Checker, key: str, path: Path) -> np.ndarray:
    """A (images, classes) matrix of whole, non-negative counts with no empty row."""
    if not path.is_file():
        raise check.fail(key, f"counts file not found: {path}")
    try:
        counts = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise check.fail(key, f"{path} is not a readable .npy array ({err})") from err
    if counts.ndim != 2 or counts.shape[0] < 1 or counts.shape[1] < 2:
        raise check.fail(
            key,
            f"{path}: expected an (images, classes) array with >= 2 classes; got shape "
            f"{counts.shape}",
        )
    if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
        raise check.fail(key, f"{path}: expected numbers; got dtype {counts.dtype}")
    bad = ~np.isfinite(counts) | (counts < 0) | (counts != np.round(counts))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise check.fail(
            key, f"{path}: row {r}, column {c}: expected a whole number >= 0; got {counts[r, c]}"
        )
    empty = counts.sum(axis=1) == 0
    if empty.any():
        raise check.fail(key, f"{path}: row {int(np.argmax(empty))} has no annotations")
    return counts.astype(np.float64)


def _truth(check: _Checker, key: str, value: Any, base: Path) -> Truth:
    """Resolve one truth table: a DCIC preset or a counts file (relative to the study)."""
    import jax

    from .._presets import preset as find_preset
    from .._presets import sample_ground_truth

    if not isinstance(value, dict) or not ("preset" in value or "counts" in value):
        raise check.fail(key, f"expected a table with `preset` or `counts`; got {value!r}")
    if "preset" in value and "counts" in value:
        raise check.fail(key, "give either `preset` or `counts`, not both")
    if "counts" in value:
        check.table(key, value, _COUNTS_KEYS)
        given = check.scalar(f"{key}.counts", value["counts"], (str,))
        path = Path(given) if Path(given).is_absolute() else base / given
        counts = _read_counts(check, f"{key}.counts", path)
        p = counts / counts.sum(axis=1, keepdims=True)
        name = value.get("name", path.stem)
    else:
        check.table(key, value, _PRESET_KEYS)
        given = check.scalar(f"{key}.preset", value["preset"], (str,))
        try:
            info = find_preset(given)
        except ValueError as err:
            raise check.fail(f"{key}.preset", str(err)) from err
        images = value.get("images")
        if images is not None:
            images = check.integers(f"{key}.images", images, 1, scalar_ok=True)[0]
        seed = check.integers(f"{key}.seed", value.get("seed", 0), 0, scalar_ok=True)[0]
        per_image = value.get("annotations")
        if per_image is not None:
            per_image = check.integers(f"{key}.annotations", per_image, 1, scalar_ok=True)[0]
        p = np.asarray(
            sample_ground_truth(
                jax.random.key(seed), info, num_images=images, annotations_per_image=per_image
            ),
            np.float64,
        )
        name = value.get("name", info.name)
    name = check.scalar(f"{key}.name", name, (str,))
    return Truth(name, p, hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest())


def parse_study(data: Mapping[str, Any], *, source: str, base: Path) -> Study:
    """Check a study's data (as read from TOML) and resolve its truths.

    Args:
        data: the parsed TOML document.
        source: the file's name, for messages.
        base: folder that relative counts paths are resolved against.

    Returns:
        A :class:`Study`.

    Raises:
        StudyError: on a missing or unknown key, a wrong type or value, an empty or
            repeated grid value, an unknown preset or method, or a bad counts file.
    """
    check = _Checker(source)
    allowed = (*_REQUIRED, *_DEFAULTS)
    for key in data:
        if key not in allowed:
            raise check.fail(key, f"unknown key; allowed keys are {', '.join(allowed)}")
    for key in _REQUIRED:
        if key not in data:
            raise check.fail(key, "missing; a study needs " + ", ".join(_REQUIRED))
    values = {**_DEFAULTS, **data}

    one_star = check.number("one_star", values["one_star"], 0.0, 1.0)
    deltas_in = values["deltas"]
    if not isinstance(deltas_in, list):
        raise check.fail("deltas", f"expected a list of numbers; got {deltas_in!r}")
    deltas = check.distinct("deltas", [check.number("deltas", d, 0.0, one_star) for d in deltas_in])
    methods_in = values["methods"]
    if not isinstance(methods_in, list):
        raise check.fail("methods", f"expected a list of method names; got {methods_in!r}")
    for m in methods_in:
        if m not in METHODS:
            raise check.fail(
                "methods", f"unknown method {m!r}; choose from {', '.join(map(repr, METHODS))}"
            )
    options = check.table("options", values["options"], tuple(OPTIONS))
    checked_options: dict[str, dict[str, Any]] = {}
    for method, opts in options.items():
        opts = check.table(f"options.{method}", opts, tuple(OPTIONS[method]))
        checked_options[method] = {
            k: check.scalar(f"options.{method}.{k}", v, OPTIONS[method][k]) for k, v in opts.items()
        }
    bc_delta = checked_options.get("CleverLabel", {}).get("delta")
    if bc_delta is not None:
        check.number("options.CleverLabel.delta", bc_delta, 0.0, one_star)
    delta_from = checked_options.get("Bayes", {}).get("delta_from")
    if delta_from is not None and delta_from not in ("calibration", "all"):
        raise check.fail(
            "options.Bayes.delta_from", f"expected 'calibration' or 'all'; got {delta_from!r}"
        )

    truth_in = values["truth"]
    tables = truth_in if isinstance(truth_in, list) else [truth_in]
    if not tables:
        raise check.fail("truth", "the list of truths is empty; give at least one")
    truths = tuple(
        _truth(check, "truth" if len(tables) == 1 else f"truth[{i}]", t, base)
        for i, t in enumerate(tables)
    )
    names = [t.name for t in truths]
    if len(set(names)) < len(names):
        raise check.fail("truth", f"truth names must be distinct; got {names} (set `name`)")
    cal_images = check.integers(
        "calibration_images", values["calibration_images"], 1, scalar_ok=True
    )
    smallest = min(t.p.shape[0] for t in truths)
    if max(cal_images) > smallest:
        raise check.fail(
            "calibration_images",
            f"expected at most {smallest} (the images of the smallest truth); got "
            f"{max(cal_images)}",
        )
    return Study(
        source=source,
        truths=truths,
        deltas=deltas,
        annotations=check.integers("annotations", values["annotations"], 1),
        calibration_images=cal_images,
        calibration_annotations=check.integers(
            "calibration_annotations", values["calibration_annotations"], 1, scalar_ok=True
        ),
        seeds=check.integers("seeds", values["seeds"], 0),
        methods=check.distinct("methods", list(methods_in)),
        accuracy=check.number("accuracy", values["accuracy"], 0.0, 1.0),
        one_star=one_star,
        mu=check.number("mu", values["mu"], 0.0, 1.0),
        options=checked_options,
    )


def load_study(path: str | Path) -> Study:
    """Read and check a TOML study file.

    A minimal file::

        truth = { preset = "Turkey" }          # or { counts = "path/to/counts.npy" }
        deltas = [0.1, 0.3]
        annotations = [1, 3, 10]
        seeds = [0, 1]
        methods = ["SPA", "CleverLabel", "CleverLabel+GT delta", "Bayes"]

    Optional keys: ``accuracy`` (proposer accuracy, 0.9), ``calibration_images`` (100)
    and ``calibration_annotations`` (10), each an integer or a list (a grid axis),
    ``one_star`` (0.99), ``mu`` (0.75), and ``[options.CleverLabel]`` (``delta``, the
    delta BC assumes, 0.1) and ``[options.Bayes]`` (options of :func:`cleverjax.fit`).
    A preset truth may set ``images``, ``seed`` and ``annotations`` (per image, to
    draw it); any truth may set ``name``; ``truth`` may be a list of tables.

    Args:
        path: the study file.

    Returns:
        A :class:`Study`.

    Raises:
        StudyError: if the file is missing, not TOML, or fails a check of
            :func:`parse_study`.
    """
    file = Path(path)
    if not file.is_file():
        raise StudyError(f"study file not found: {file}")
    try:
        data = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"{file}: not a valid TOML file ({err})") from err
    return parse_study(data, source=str(file), base=file.parent)
