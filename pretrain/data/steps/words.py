"""Words and sentences as datatrove's filters count them: spaCy's rule-based English tokenizer and
sentencizer (blank pipeline, no model download), shared by the Gopher and C4 steps, made fast on long text.

Why it can be fast and stay equal. spaCy's tokenizer first cuts the text at whitespace and then
splits each whitespace-free chunk on its own (prefixes, suffixes, infixes, special cases); a run of
whitespace other than one ' ' becomes a whitespace token. So the words of a text are, but for special
cases that reach across a space (below), the concatenation of its chunks' words, and a chunk ("the",
"data.", "(see") recurs across a corpus by Zipf's law: each distinct chunk is split once, as spaCy splits
it alone, and remembered (`chunks_of`) with what the Gopher quality rule counts of it. Measured on 51.5 MB
of installed real text (`benchmarks/bench_curate_real.py`, 2026-12-07): the words equal spaCy's whole-text
tokenisation on every document but one (a doctest "x.A" that spaCy's special-case matcher splits
differently inside a longer text), and every Gopher and C4 decision equals datatrove's, at 6.5x its
documents per CPU-second. The sentencizer's rule is replayed on the same tokens (`count_sentences`).
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import NamedTuple

_WORD = re.compile(r"[a-z][a-z0-9+.\-]*://\S+|www\.\S+|[\w.+\-]+@[\w\-]+\.[\w.\-]+|\w+(?:['’.\-]\w+)*|[^\w\s]+",
                   re.UNICODE | re.IGNORECASE)
_WHITESPACE_RUN = re.compile(r"\s+")
#: What makes a token "not a word" (Gopher counts words without it): ASCII punctuation and symbols and every
#: Unicode punctuation character (categories P*: CJK full stops and brackets, guillemets, dashes...), 828 in
#: all. datatrove's hand-made set has 281, 71 of them symbols outside P* (´ ━ ► and full-width forms such
#: as ～ and １); neither changes a decision on our real-text tests, and the rule says which characters count.
#: Scanned below U+20000 only: the planes above hold ideographs, tags, variation selectors and private use, no
#: punctuation (a test scans every code point and finds the same set); a fifth of the whole scan's import time.
PUNCTUATION_PLANES_END = 0x20000
PUNCTUATION = frozenset(string.punctuation) | frozenset(
    ch for ch in map(chr, range(PUNCTUATION_PLANES_END)) if unicodedata.category(ch).startswith("P"))

#: Distinct chunks remembered per process; past it the memory starts again (a corpus's common chunks
#: come back within a few documents).
MAX_REMEMBERED_CHUNKS = 1 << 20

_SPACY = None


def _spacy():
    """spaCy's rule-based English pipeline (blank: no model download) with its sentencizer, or False."""
    global _SPACY
    if _SPACY is None:
        try:
            spacy = _import_spacy_without_torch()
            _SPACY = spacy.blank("en")
            _SPACY.add_pipe("sentencizer")
            # Each new word's lexeme computes 23 lexical attributes (shape, like_num, is_stop...) that nothing
            # here reads, only token texts: a third of the tokenizer's time on real text; how it splits does not
            # depend on them. (So this pipeline's is_punct, is_space... are unset: not a reference for others.)
            _SPACY.vocab.lex_attr_getters = {}
        except ImportError:
            _SPACY = False
    return _SPACY


def _import_spacy_without_torch():
    """`import spacy`, without the torch that it would load and never use here.

    spaCy imports thinc, whose `thinc.compat` imports torch when it is installed, only to offer torch-backed
    layers; the tokenizer and sentencizer are pure Cython. torch was two thirds of spaCy's import on this
    machine (`python -X importtime`: 6.6 of 9.4 s), paid again by every curation worker, so it was most of
    the serial part that kept 2 workers under 1.8x one (`benchmarks/bench_curate_real.py`). A `None` in
    `sys.modules` makes `import torch` raise ImportError (the import system's documented rule), which thinc
    takes as "no torch"; where torch is already loaded (a trainer's process) nothing is hidden."""
    if "torch" in sys.modules:
        import spacy

        return spacy
    sys.modules["torch"] = None
    try:
        import spacy
    finally:
        del sys.modules["torch"]
    return spacy


@lru_cache(maxsize=1)
def _sentence_punctuation() -> frozenset[str]:
    nlp = _spacy()
    return frozenset(nlp.get_pipe("sentencizer").punct_chars) if nlp else frozenset(".!?")


def is_punct(token: str) -> bool:
    """spaCy's IS_PUNCT: every character is Unicode punctuation (categories P*)."""
    return all(unicodedata.category(ch).startswith("P") for ch in token)


class Chunk(NamedTuple):
    """One whitespace-free chunk: its words, and what Gopher's quality rule counts of them."""

    words: tuple[str, ...]
    non_symbol_words: int  # words with a character outside PUNCTUATION
    non_symbol_chars: int
    alphabetic_words: int  # words with an alphabetic character


_CHUNKS: dict[str, Chunk] = {}


def _counted(words: tuple[str, ...]) -> Chunk:
    real = [w for w in words if not PUNCTUATION.issuperset(w)]  # a character outside PUNCTUATION (C-speed)
    return Chunk(words, len(real), sum(map(len, real)), sum(map(_has_letter, words)))


_ASCII_LETTER = re.compile(r"[A-Za-z]")


def _has_letter(word: str) -> bool:
    """Any character is alphabetic (str.isalpha); for ASCII, a letter A-Z or a-z."""
    if word.isascii():
        return _ASCII_LETTER.search(word) is not None
    return any(ch.isalpha() for ch in word)


@lru_cache(maxsize=1)
def _special_cases() -> frozenset[str]:
    nlp = _spacy()
    return frozenset(nlp.tokenizer.rules) if nlp else frozenset()


def is_one_word(piece: str) -> bool:
    """Whether spaCy's English tokenizer leaves `piece` whole without being asked: ASCII letters only or digits
    only, and not a special case ("Cannot", "gonna", "dont" are split). Every prefix, suffix and infix rule of
    its English defaults needs a character that is neither (punctuation, quotes, currency, symbols, or digits
    next to letters: "10km"), so such a chunk is one token (checked against spaCy on real text in the tests)."""
    return piece.isascii() and (piece.isalpha() or piece.isdigit()) and piece not in _special_cases()


def _split_new(pieces: list[str]) -> list[tuple[str, ...]]:
    """The words of chunks not seen before, each as spaCy splits it alone: one spaCy call over those it could
    split, joined by newlines. Alone, not beside its neighbours: spaCy's special cases can reach across a space
    (in "a: (:py" the emoticon ":(" takes the "(" that "(:py" alone keeps as "(:"), so a chunk split among
    whichever other chunks happen to be new would depend on what this process saw before it; a newline is a
    token of its own, which no special case crosses. One Doc, not one per chunk, for speed."""
    nlp = _spacy()
    if not nlp:
        return [tuple(_WORD.findall(p)) for p in pieces]
    whole = list(map(is_one_word, pieces))
    hard = iter(_spacy_split(nlp, [p for p, w in zip(pieces, whole, strict=True) if not w]))
    return [(p,) if w else next(hard) for p, w in zip(pieces, whole, strict=True)]


def _spacy_split(nlp, pieces: list[str]) -> list[tuple[str, ...]]:
    if not pieces:
        return []
    split, words = [], []
    for token in nlp.tokenizer("\n".join(pieces)):
        if token.text == "\n":  # a separator: the pieces hold no whitespace
            split.append(tuple(words))
            words = []
        else:
            words.append(token.text)
    split.append(tuple(words))
    return split


def chunks_of(text: str) -> list[Chunk]:
    """The text's whitespace-free chunks, each split once per process."""
    if len(_CHUNKS) > MAX_REMEMBERED_CHUNKS:
        _CHUNKS.clear()
    pieces = text.split()
    out = list(map(_CHUNKS.get, pieces))
    if None in out:
        new = list(dict.fromkeys(p for p, c in zip(pieces, out, strict=True) if c is None))
        for piece, words in zip(new, _split_new(new), strict=True):
            _CHUNKS[piece] = _counted(words)
        out = list(map(_CHUNKS.__getitem__, pieces))
    return out


_WORDS, _NON_SYMBOL, _NON_SYMBOL_CHARS, _ALPHABETIC = (attrgetter(f) for f in Chunk._fields)


@dataclass(frozen=True)
class Words:
    """A text's words (spaCy's tokens, whitespace left out) and the sums Gopher's quality rule reads."""

    words: tuple[str, ...]
    non_symbol_words: int
    non_symbol_chars: int
    alphabetic_words: int


_LAST: tuple[str, Words | None] = ("", None)


def words_of(text: str) -> Words:
    """The words of `text` as spaCy's English tokenizer splits them (what datatrove's Gopher filters
    count); without spaCy, a regex that keeps URLs and e-mail addresses whole and splits punctuation.

    The steps that count words (Gopher quality, then repetition) see the same text in a row, so the
    last result is kept and reused."""
    global _LAST
    if _LAST[1] is not None and (_LAST[0] is text or _LAST[0] == text):
        return _LAST[1]
    chunks = chunks_of(text)
    words = Words(tuple(chain.from_iterable(map(_WORDS, chunks))), sum(map(_NON_SYMBOL, chunks)),
                  sum(map(_NON_SYMBOL_CHARS, chunks)), sum(map(_ALPHABETIC, chunks)))
    _LAST = (text, words)
    return words


def count_sentences(text: str) -> int:
    """Sentences as spaCy's rule-based sentencizer splits `text` (what datatrove's C4 filter counts),
    replayed on the cached tokens: a sentence ends at a token in the sentencizer's punctuation (".",
    "!", "?" and 125 others) once a later token is neither punctuation nor in that set; spaCy keeps
    abbreviations ("e.g.", "U.S.", "Dr.") and decimals whole, so they end nothing. A run of
    whitespace other than one ' ' is a token of its own, not punctuation, so it can start a sentence.
    Sentences left empty by `strip` are not counted (datatrove strips them)."""
    text = text.strip()
    if not text:
        return 0
    ends = _sentence_punctuation()
    sentences, seen_end = 1, False
    gaps = _WHITESPACE_RUN.findall(text)
    for i, chunk in enumerate(chunks_of(text)):
        if i and gaps[i - 1] != " " and seen_end:  # spaCy's whitespace token, after a sentence's end
            sentences, seen_end = sentences + 1, False
        for word in chunk.words:
            if word in ends:
                seen_end = True
            elif seen_end and not is_punct(word):
                sentences, seen_end = sentences + 1, False
    return sentences
