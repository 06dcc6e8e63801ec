"""Language identification with py3langid (langid.py, Lui & Baldwin 2012): its model ships inside the
package, so nothing is downloaded; documents below `min_score` (datatrove's 0.65) are dropped."""

from __future__ import annotations

from pretrain.data.documents import Document
from pretrain.data.steps.base import Step


class LanguageFilter(Step):
    name = "language"

    def __init__(self, languages=("en",), min_score=0.65):
        super().__init__()
        self.languages, self.min_score = tuple(languages), min_score
        self._identifier = None

    def _classify(self, text: str) -> tuple[str, float]:
        if self._identifier is None:
            from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

            self._identifier = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
        lang, score = self._identifier.classify(text.replace("\n", " "))
        return lang, float(score)

    def reject(self, doc: Document) -> str | None:
        lang, score = self._classify(doc.text)
        doc.meta["language"], doc.meta["language_score"] = lang, round(score, 4)
        if lang not in self.languages:
            return f"language {lang}"
        if score < self.min_score:
            return "language score below threshold"
        return None
