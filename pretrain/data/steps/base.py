"""What every curation step is: `Step.apply` keeps, changes or drops one document and counts it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pretrain.data.documents import Document


@dataclass
class StepStats:
    """One step's counts for one domain: the rows of the curation funnel."""

    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    changed: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "chars_in": self.chars_in,
                "chars_out": self.chars_out, "dropped": dict(self.dropped), "changed": dict(self.changed)}


class Step:
    """A curation step: `apply` returns the (possibly changed) document, or None to drop it."""

    name = "step"

    def __init__(self) -> None:
        self.stats: dict[str, StepStats] = {}  # per domain
        self.last_reason: str | None = None  # why the last document was dropped

    def apply(self, doc: Document) -> Document | None:
        s = self.stats.setdefault(doc.domain, StepStats())
        s.docs_in += 1
        s.chars_in += len(doc.text)
        reason = self.last_reason = self.reject(doc)
        if reason:
            s.dropped[reason] += 1
            return None
        s.docs_out += 1
        s.chars_out += len(doc.text)
        return doc

    def reject(self, doc: Document) -> str | None:
        """A reason to drop the document, or None to keep it (may modify `doc.text`)."""
        raise NotImplementedError
