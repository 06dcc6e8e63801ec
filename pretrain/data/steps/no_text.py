"""Drop a document with no words left once deduplication normalises it (no letters: only digits, punctuation,
symbols), by its own rule and reason: every such document normalises to the same empty string, so without
this step dedup would list them all as exact duplicates of one another (Jaccard 1.0)."""

from __future__ import annotations

from pretrain.data.dedup.signatures import normalise
from pretrain.data.documents import Document
from pretrain.data.steps.base import Step


class NoText(Step):
    name = "no_text"

    def reject(self, doc: Document) -> str | None:
        return None if normalise(doc.text) else "no words after normalisation"
