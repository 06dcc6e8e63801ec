"""C4's line cleanup and document rules (Raffel et al. 2020, §2.2)."""

from __future__ import annotations

import re

from pretrain.data.documents import Document
from pretrain.data.steps.base import Step, StepStats
from pretrain.data.steps.words import count_sentences

_C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_C4_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_C4_END = (".", "?", "!", '"', "'")


#: Where "lorem ipsum" and "{" drop a document: only on kept lines (the reference C4) or anywhere.
C4_DOCUMENT_RULES = ("kept_lines", "whole_document")


class C4Rules(Step):
    """C4's line cleanup and its document rules (Raffel et al. 2020, §2.2).

    Lines go in order, as the reference C4 (tfds `c4_utils.clean_page`) and datatrove's
    C4QualityFilter take them: drop a line with a word over `max_word_len`, strip citations, drop a
    line without terminal punctuation or with under `min_words_per_line` words; a surviving line
    with "lorem ipsum" or "{" drops the document; a line mentioning javascript or a cookie/policy
    phrase is dropped; then the document needs `min_sentences` sentences over its kept lines.

    `document_rules`: "kept_lines" (default: the reference C4 and datatrove) checks "lorem ipsum"
    and "{" only on lines that survive the punctuation and word-count rules; "whole_document" drops
    a document with either anywhere (stricter: also code snippets and templates in dropped lines).
    """

    name = "c4"

    def __init__(self, require_terminal_punctuation=True, min_words_per_line=3, max_word_len=1000,
                 min_sentences=5, bad_words: tuple[str, ...] = (), document_rules: str = "kept_lines"):
        super().__init__()
        if document_rules not in C4_DOCUMENT_RULES:
            raise ValueError(f"document_rules: {document_rules!r} is not one of {', '.join(C4_DOCUMENT_RULES)}")
        self.require_terminal_punctuation, self.min_words_per_line = require_terminal_punctuation, min_words_per_line
        self.max_word_len, self.min_sentences, self.bad_words = max_word_len, min_sentences, tuple(bad_words)
        self.document_rules = document_rules

    def _line_verdict(self, line: str) -> tuple[str, str]:
        """("keep" | "drop line" | "drop document", reason) for one stripped line."""
        words = line.split()
        if any(len(w) > self.max_word_len for w in words):
            return "drop line", "line with a very long word"
        line = _C4_CITATION.sub("", line)
        if self.require_terminal_punctuation and (not line.endswith(_C4_END) or line.endswith("...")):
            return "drop line", "line without terminal punctuation"
        if len(words) < self.min_words_per_line:
            return "drop line", "line with too few words"
        lower = line.lower()
        if "lorem ipsum" in lower:
            return "drop document", "lorem ipsum"
        if "javascript" in lower:
            return "drop line", "line mentioning javascript"
        if "{" in line:
            return "drop document", "curly bracket"
        if any(p in lower for p in _C4_POLICY):
            return "drop line", "policy/cookie line"
        return "keep", line

    def reject(self, doc: Document) -> str | None:
        if self.document_rules == "whole_document":
            if "lorem ipsum" in doc.text.lower():
                return "lorem ipsum"
            if "{" in doc.text:
                return "curly bracket"
        removed = self.stats.setdefault(doc.domain, StepStats()).changed
        kept = []
        for line in doc.text.splitlines():
            line = line.strip()
            if not line:
                continue
            verdict, detail = self._line_verdict(line)
            if verdict == "drop document":
                return detail
            if verdict == "drop line":
                removed[detail] += 1
            else:
                kept.append(detail)
        text = "\n".join(kept)
        lower = text.lower()
        if any(re.search(rf"\b{re.escape(w)}\b", lower) for w in self.bad_words):
            return "bad word"
        if sum(count_sentences(line) for line in kept) < self.min_sentences:
            return f"fewer than {self.min_sentences} sentences"
        doc.text = text
        return None
