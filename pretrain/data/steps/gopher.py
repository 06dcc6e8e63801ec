"""Gopher's quality and repetition filters (Rae et al. 2021, MassiveText, §A.1 and Table A1)."""

from __future__ import annotations

import re
from itertools import count

import numpy as np

from pretrain.data.documents import Document
from pretrain.data.steps.base import Step
from pretrain.data.steps.words import words_of

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
    counted = words_of(text)
    n_words, real = len(counted.words), counted.non_symbol_words
    if real < p.min_words:
        return "too few words"
    if real > p.max_words:
        return "too many words"
    if not p.min_mean_word_len <= counted.non_symbol_chars / real <= p.max_mean_word_len:
        return "mean word length"
    if text.count("#") / n_words > p.max_symbol_ratio:
        return "hash symbols"
    if (text.count("...") + text.count("…")) / n_words > p.max_symbol_ratio:
        return "ellipses"
    lines = text.splitlines() or [text]
    if sum(line.lstrip().startswith(("•", "-")) for line in lines) / len(lines) > p.max_bullet_lines:
        return "bullet lines"
    if sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > p.max_ellipsis_lines:
        return "lines ending in ellipsis"
    if counted.alphabetic_words / n_words < p.min_alpha_words:
        return "few alphabetic words"
    if len(STOP_WORDS.intersection(counted.words)) < p.min_stop_words:
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


class WordNGrams:
    """A document's word n-grams as exact integer ids (equal ids, equal n-grams; no hashing), built
    n from n - 1 with numpy, so the repetition rules cost a few array passes, not a Python loop per word."""

    def __init__(self, words: tuple[str, ...]):
        first_seen: dict[str, int] = {}  # a word's id: where it first occurs
        ids = np.fromiter(map(first_seen.setdefault, words, count()), dtype=np.int64, count=len(words))
        self.size = len(words)
        self.chars = np.concatenate(([0], np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)))))
        self._grams = {1: (ids, np.arange(len(words)))}

    def grams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(id of the n-gram at each start position, first start position of each id)."""
        if n not in self._grams:
            shorter, _ = self.grams(n - 1)
            words = self._grams[1][0]
            key = shorter[:-1] * self.size + words[n - 1:]  # both ids < size: distinct pairs, distinct keys
            _, first, ids = np.unique(key, return_index=True, return_inverse=True)
            self._grams[n] = (ids.reshape(-1), first)
        return self._grams[n]

    def gram_chars(self, n: int) -> np.ndarray:
        """Characters of the words of the n-gram at each start position (spaces not counted)."""
        return self.chars[n:] - self.chars[:-n]

    def top_chars(self, n: int) -> int:
        """Characters (with the spaces inside it) of the most frequent n-gram, times its occurrences; of
        equally frequent n-grams, the first to occur (what `Counter.most_common` picks)."""
        if self.size < n:
            return 0
        ids, first = self.grams(n)
        counts = np.bincount(ids, minlength=len(first))
        top = counts.max()
        start = int(first[counts == top].min())
        return int(self.gram_chars(n)[start] + n - 1) * int(top)

    def duplicated_chars(self, n: int, counting: str = "sequential", stop_above: float = np.inf) -> int:
        """Characters in n-grams that repeat an earlier n-gram, no character counted twice.

        `sequential` (datatrove's and Dolma's reading): scan left to right and, after a repeated
        n-gram, continue after it. `union`: every word inside any repeated n-gram window, which
        covers a repeated span of more than n words in full (a stricter reading of Rae et al.).
        The sequential count stops once it passes `stop_above` (it only grows)."""
        if self.size < n:
            return 0
        ids, first = self.grams(n)
        repeats = np.flatnonzero(first[ids] != np.arange(len(ids)))  # an equal n-gram starts earlier
        if counting == "union":
            covered = np.zeros(self.size + 1, dtype=np.int64)
            np.add.at(covered, repeats, 1)
            np.add.at(covered, repeats + n, -1)
            lengths = np.diff(self.chars)
            return int(lengths[np.cumsum(covered)[:-1] > 0].sum())
        gram_chars, seen = self.gram_chars(n), np.zeros(len(first), dtype=bool)
        chars, i = 0, 0
        for j in repeats.tolist():  # between repeats every position is a first occurrence: visited, remembered
            if j < i:
                continue
            seen[ids[i:j]] = True
            if seen[ids[j]]:
                chars += int(gram_chars[j])
                if chars > stop_above:
                    return chars
                i = j + n
            else:
                seen[ids[j]] = True
                i = j + 1
        return chars


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
        return self._ngram_reason(words_of(text).words, len(text))

    def _ngram_reason(self, words: tuple[str, ...], total: int) -> str | None:
        """`total`: the document's characters ("fraction of characters", Rae et al. 2021, Table A1)."""
        grams = WordNGrams(words)
        for n, limit in self.top_ngram:
            if grams.top_chars(n) / total > limit:
                return f"top {n}-gram"
        for n, limit in self.dup_ngram:
            if grams.duplicated_chars(n, self.dup_ngram_counting, stop_above=limit * total) / total > limit:
                return f"duplicated {n}-grams"
        return None
