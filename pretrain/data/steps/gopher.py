"""Gopher's quality and repetition filters (Rae et al. 2021, MassiveText, §A.1 and Table A1)."""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter

from pretrain.data.documents import Document
from pretrain.data.steps.base import Step
from pretrain.data.steps.words import words_of

#: What makes a token "not a word" (Gopher counts words without it): ASCII punctuation and symbols and every
#: Unicode punctuation character (categories P*: CJK full stops and brackets, guillemets, dashes...), 828 in
#: all. datatrove's hand-made set has 281, 71 of them symbols outside P* (´ ━ ► and full-width forms such
#: as ～ and １); neither changes a decision on our real-text tests, and the rule says which characters count.
PUNCTUATION = frozenset(string.punctuation) | frozenset(
    ch for ch in map(chr, range(sys.maxunicode + 1)) if unicodedata.category(ch).startswith("P"))
#: Gopher's stop words (Rae et al. 2021, §A.1.1): a document must contain at least two.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})


class GopherQuality(Step):
    name = "gopher_quality"

    def __init__(self, min_words=50, max_words=100_000, min_mean_word_len=3, max_mean_word_len=10,
                 max_symbol_ratio=0.1, max_bullet_lines=0.9, max_ellipsis_lines=0.3, min_alpha_words=0.8,
                 min_stop_words=2):
        super().__init__()
        self.__dict__.update({k: v for k, v in locals().items() if k not in ("self", "__class__")})

    def reject(self, doc: Document) -> str | None:
        return gopher_quality_reason(doc.text, self)


def gopher_quality_reason(text: str, p) -> str | None:
    words = words_of(text)
    real = [w for w in words if any(ch not in PUNCTUATION for ch in w)]
    if len(real) < p.min_words:
        return "too few words"
    if len(real) > p.max_words:
        return "too many words"
    mean_len = sum(map(len, real)) / len(real)
    if not p.min_mean_word_len <= mean_len <= p.max_mean_word_len:
        return "mean word length"
    if text.count("#") / len(words) > p.max_symbol_ratio:
        return "hash symbols"
    if (text.count("...") + text.count("…")) / len(words) > p.max_symbol_ratio:
        return "ellipses"
    lines = text.splitlines() or [text]
    if sum(line.lstrip().startswith(("•", "-")) for line in lines) / len(lines) > p.max_bullet_lines:
        return "bullet lines"
    if sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > p.max_ellipsis_lines:
        return "lines ending in ellipsis"
    if sum(any(c.isalpha() for c in w) for w in words) / len(words) < p.min_alpha_words:
        return "few alphabetic words"
    if len(STOP_WORDS.intersection(words)) < p.min_stop_words:
        return "few stop words"
    return None


def _duplicate_fraction(parts: list[str], total_chars: int) -> tuple[float, float]:
    """(fraction of parts that repeat an earlier one, their characters over the document's)."""
    seen, dup_parts, dup_chars = set(), 0, 0
    for part in parts:
        if part in seen:
            dup_parts += 1
            dup_chars += len(part)
        else:
            seen.add(part)
    return dup_parts / max(1, len(parts)), dup_chars / max(1, total_chars)


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters (with the spaces inside it) of the most frequent n-gram, times its occurrences."""
    counts = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
    if not counts:
        return 0
    gram, count = counts.most_common(1)[0]
    return (sum(map(len, gram)) + n - 1) * count


def _duplicated_ngram_chars(words: list[str], n: int, counting: str = "sequential") -> int:
    """Characters in n-grams that repeat an earlier n-gram, no character counted twice.

    `sequential` (datatrove's and Dolma's reading): scan left to right and, after a repeated
    n-gram, continue after it. `union`: every word inside any repeated n-gram window, which
    covers a repeated span of more than n words in full (a stricter reading of Rae et al.).
    """
    if counting == "sequential":
        seen, chars, i = set(), 0, 0
        while i <= len(words) - n:
            gram = tuple(words[i: i + n])
            if gram in seen:
                chars += sum(map(len, gram))
                i += n
            else:
                seen.add(gram)
                i += 1
        return chars
    seen, covered = set(), [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i: i + n])
        if gram in seen:
            for j in range(i, i + n):
                covered[j] = True
        else:
            seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c)


class GopherRepetition(Step):
    name = "gopher_repetition"

    def __init__(self, max_dup_lines=0.30, max_dup_paragraphs=0.30, max_dup_line_chars=0.20,
                 max_dup_paragraph_chars=0.20, top_ngram=((2, 0.20), (3, 0.18), (4, 0.16)),
                 dup_ngram=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
                 dup_ngram_counting="sequential"):
        super().__init__()
        if dup_ngram_counting not in ("sequential", "union"):
            raise ValueError(f"dup_ngram_counting: {dup_ngram_counting!r} is not one of sequential, union")
        self.dup_ngram_counting = dup_ngram_counting
        self.max_dup_lines, self.max_dup_paragraphs = max_dup_lines, max_dup_paragraphs
        self.max_dup_line_chars, self.max_dup_paragraph_chars = max_dup_line_chars, max_dup_paragraph_chars
        self.top_ngram, self.dup_ngram = tuple(top_ngram), tuple(dup_ngram)

    def reject(self, doc: Document) -> str | None:
        text = doc.text
        paragraphs = re.split(r"\n{2,}", text.strip())
        frac, chars = _duplicate_fraction(paragraphs, len(text))
        if frac > self.max_dup_paragraphs:
            return "duplicate paragraphs"
        if chars > self.max_dup_paragraph_chars:
            return "characters in duplicate paragraphs"
        lines = re.split(r"\n+", text)
        frac, chars = _duplicate_fraction(lines, len(text))
        if frac > self.max_dup_lines:
            return "duplicate lines"
        if chars > self.max_dup_line_chars:
            return "characters in duplicate lines"
        return self._ngram_reason(words_of(text), len(text))

    def _ngram_reason(self, words: tuple[str, ...], total: int) -> str | None:
        """`total`: the document's characters ("fraction of characters", Rae et al. 2021, Table A1)."""
        for n, limit in self.top_ngram:
            if _top_ngram_chars(words, n) / total > limit:
                return f"top {n}-gram"
        for n, limit in self.dup_ngram:
            if _duplicated_ngram_chars(words, n, self.dup_ngram_counting) / total > limit:
                return f"duplicated {n}-grams"
        return None
