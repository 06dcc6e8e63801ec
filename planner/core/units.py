"""Units and the parsing of human-written numbers.

Every figure the planner prints names its unit. Memory is reported in GiB (2**30 bytes), the unit
GPU vendors' tools, DeepSpeed and accelerate actually use (they print "GB" but divide by 2**30);
the ZeRO and Chinchilla papers use decimal GB (1e9), which `GB` is here for.
"""

from __future__ import annotations

import math
import re

from planner.core.errors import PlannerError

MiB = 2**20
GiB = 2**30
GB = 10**9
SECONDS_PER_DAY = 86_400
#: 1 petaFLOP/s-day = 1e15 FLOP/s for one day (Brown et al. 2020, GPT-3, Appendix D).
PF_DAY_FLOPS = 1e15 * SECONDS_PER_DAY

_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}
_COUNT = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgtp]?)\s*$", re.IGNORECASE)


def parse_count(text: str | float | int, flag: str, *, allow_zero: bool = False) -> float:
    """Parse `7e9`, `7B`, `70b`, `1.3e9`, `1.4T`, `500M` into a positive float.

    Raises PlannerError naming `flag` when the text is not such a number or is not positive.
    """
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _COUNT.match(str(text))
        if not match:
            raise PlannerError(
                f"{flag}: {text!r} is not a number; use a plain or scientific number or a suffix, "
                "e.g. 7e9, 7B, 70b, 1.3e9, 1.4T, 500M"
            )
        value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise PlannerError(f"{flag}: {text!r} must be a positive number, e.g. 7e9 or 7B")
    return value


def human_count(value: float) -> str:
    """1.3e9 -> '1.30B', 7e10 -> '70.0B', 2.1e12 -> '2.10T'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.3g}"
