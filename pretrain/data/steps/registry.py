"""The per-document steps by name, in pipeline order, and how `curate:` builds each for a domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain.data.steps.base import Step
from pretrain.data.steps.c4 import C4Rules
from pretrain.data.steps.gopher import GopherQuality, GopherRepetition
from pretrain.data.steps.language import LanguageFilter
from pretrain.data.steps.no_text import NoText
from pretrain.data.steps.pii import PIIRedactor

if TYPE_CHECKING:
    from pretrain.data.config import CurateConfig

#: The per-document steps, in order, by name (each can be switched off in `curate:`; `no_text` runs whenever a
#: dedup does: it drops what dedup's normalisation leaves empty).
DOCUMENT_STEPS = ("gopher_quality", "gopher_repetition", "c4", "language", "pii", "no_text")


def document_step(c: CurateConfig, name: str, domain: str) -> Step:
    """One per-document step for one domain, with the domain's overrides."""
    over = (c.overrides.get(domain, {}) if c.overrides else {}).get(name, {})
    if name == "language":
        return LanguageFilter(c.languages, c.min_language_score)
    if name == "no_text":
        return NoText()
    if name == "c4":
        over = {"document_rules": c.c4_document_rules, **over}
    return {"gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition, "c4": C4Rules,
            "pii": PIIRedactor}[name](**over)


def enabled_document_steps(c: CurateConfig) -> list[str]:
    """The names of the steps `curate:` leaves on, in pipeline order."""
    dedup = c.exact_dedup or c.minhash_dedup
    return [name for name in DOCUMENT_STEPS if (dedup if name == "no_text" else getattr(c, name))]
