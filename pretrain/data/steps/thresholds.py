"""Which thresholds `curate.overrides.<domain>.<step>` may change, checked against each step's own
keyword arguments and the kind of their defaults: a typo fails when the config loads, not mid-run."""

from __future__ import annotations

import inspect
import math
from typing import Any

from planner.core.schema import ConfigError
from pretrain.data.steps.c4 import C4Rules
from pretrain.data.steps.gopher import GopherQuality, GopherRepetition

#: The steps whose thresholds `curate.overrides.<domain>.<step>` may change (the language filter
#: takes `curate.languages` and `curate.min_language_score`, which hold for every domain).
STEPS_WITH_THRESHOLDS = {"gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition,
                         "c4": C4Rules}


def check_overrides(overrides: dict[str, Any], domains: list[str]) -> None:
    """`curate.overrides` names known domains, steps with thresholds and each step's own keyword
    arguments, with values of the type of the step's default: a typo fails at load, not mid-run."""
    for domain, steps in overrides.items():
        key = f"curate.overrides.{domain}"
        if domain not in domains:
            raise ConfigError(f"{key}: no source has domain {domain!r} (domains: {', '.join(domains)})")
        _mapping(key, steps)
        for name, params in steps.items():
            if name not in STEPS_WITH_THRESHOLDS:
                raise ConfigError(f"{key}.{name}: not a step with thresholds (one of "
                                  f"{', '.join(STEPS_WITH_THRESHOLDS)})")
            _mapping(f"{key}.{name}", params)
            defaults = _defaults(STEPS_WITH_THRESHOLDS[name])
            for arg, value in params.items():
                if arg not in defaults:
                    raise ConfigError(f"{key}.{name}.{arg}: not a threshold of {name} (one of "
                                      f"{', '.join(defaults)})")
                _check_like(f"{key}.{name}.{arg}", value, defaults[arg])
            try:
                STEPS_WITH_THRESHOLDS[name](**params)  # the step's own checks (c4's document_rules)
            except ValueError as exc:
                raise ConfigError(f"{key}.{name}.{exc}") from None


def _mapping(key: str, value) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a mapping of keys to values, not {type(value).__name__}")


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name != "self"}


def _check_like(key: str, value, default) -> None:
    """`value` has the kind of `default`: a bool, a whole number >= 0, a number >= 0, a word, words."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool) and value >= 0, "a whole number >= 0"
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        kind = "a number >= 0"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:  # a tuple of words (c4's bad_words)
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        kind = "a list of strings"
    if not ok:
        raise ConfigError(f"{key}: {value!r} must be {kind}")
