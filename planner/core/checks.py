"""Validation at the edge: one function per kind of value, each raising a one-line PlannerError.

Every value that can reach a shell script (names, paths, times, partitions, hosts) is checked
here before anything is written: shell quoting does not protect a `#SBATCH` comment line, and a
newline in a value would start a new command there.
"""

from __future__ import annotations

import math
import re

from planner.core.errors import PlannerError

#: Learning rates accepted: any finite positive value up to this (the trainer's divergence handling is
#: tested with huge ones); NaN, infinities and values <= 0 are refused.
MAX_LR = 1e6

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PARTITION = re.compile(r"[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*")
# Slurm's --time formats (sbatch(1)): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or UNLIMITED / INFINITE.
_SLURM_TIME = re.compile(r"(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE)")
#: A word a shell reads as itself, unquoted: what datatrove pastes into its Slurm scripts must be one.
_SHELL_WORD = re.compile(r"[A-Za-z0-9_./:@%+=,~][A-Za-z0-9_./:@%+=,~-]*")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def no_control(flag: str, value: str) -> str:
    """Any text that ends up in a script or a config: no newline, carriage return or other control character."""
    if not isinstance(value, str) or not value:
        raise PlannerError(f"{flag}: must be a non-empty string")
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise PlannerError(f"{flag}: {value!r} contains a control character ({bad!r}); use plain text")
    return value


def _matching(flag: str, value: str, pattern: re.Pattern, what: str) -> str:
    no_control(flag, value)
    if not pattern.fullmatch(value):
        raise PlannerError(f"{flag}: {value!r} is not {what}")
    return value


def name(flag: str, value: str) -> str:
    """Run and job names: letters, digits, '.', '_' and '-', starting with a letter or digit, <= 128."""
    return _matching(flag, value, _NAME, "a valid name (letters, digits, '.', '_', '-'; start with a letter or "
                                         "digit; at most 128 characters)")


def sha256(flag: str, value: str) -> str:
    """A SHA-256 digest as hex text (64 lowercase hex digits)."""
    return _matching(flag, value, _SHA256, "a SHA-256 hex digest")


def partition(flag: str, value: str) -> str:
    return _matching(flag, value, _PARTITION, "a SLURM partition list (names of letters, digits, '.', '_', '-', "
                                              "separated by commas)")


def slurm_time(flag: str, value: str) -> str:
    return _matching(flag, value, _SLURM_TIME, "a SLURM time (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or "
                                               "UNLIMITED), e.g. 48:00:00 or 2-00:00:00")


def shell_word(flag: str, value: str) -> str:
    """A path or value pasted unquoted into a script by a library we do not control (datatrove's
    sbatch scripts): letters, digits and `_ . / : @ % + = , ~ -` only, so no space, `;`, `$` or quote."""
    return _matching(flag, value, _SHELL_WORD, "safe to paste into a job script unquoted (letters, digits and "
                                               "_ . / : @ % + = , ~ - only, not starting with -: an option)")


def relative_inside(flag: str, value: str) -> str:
    """A path relative to a job's folder that stays inside it: not absolute, no `..` part."""
    from pathlib import PurePosixPath

    no_control(flag, value)
    parts = PurePosixPath(value).parts
    if value.startswith(("/", "~")) or ".." in parts:
        raise PlannerError(f"{flag}: {value!r} must be a path inside the output folder (relative, no '..')")
    return value


def host(flag: str, value: str) -> str:
    return _matching(flag, value, _HOST, "a host name or IP address")


def port(flag: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PlannerError(f"{flag}: {value!r} is not a TCP port (1-65535)")
    return value


def integer(flag: str, value: int, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        upper = f" and at most {hi:,}" if hi is not None else ""
        raise PlannerError(f"{flag}: {value!r} must be an integer of at least {lo:,}{upper}")
    return value


def number(flag: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """A finite float in [lo, hi] ((lo, hi] with `lo_open`); NaN and infinities are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        raise PlannerError(f"{flag}: {value!r} must be a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return float(value)
