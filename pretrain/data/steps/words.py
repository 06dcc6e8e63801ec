"""Words and sentences as datatrove's filters count them: spaCy's rule-based English tokenizer and
sentencizer (blank pipeline, no model download), shared by the Gopher and C4 steps."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z][a-z0-9+.\-]*://\S+|www\.\S+|[\w.+\-]+@[\w\-]+\.[\w.\-]+|\w+(?:['’.\-]\w+)*|[^\w\s]+",
                   re.UNICODE | re.IGNORECASE)


_SPACY = None


def _spacy():
    """spaCy's rule-based English pipeline (blank: no model download) with its sentencizer, or False."""
    global _SPACY
    if _SPACY is None:
        try:
            import spacy

            _SPACY = spacy.blank("en")
            _SPACY.add_pipe("sentencizer")
        except ImportError:
            _SPACY = False
    return _SPACY


_LAST_WORDS: tuple[str, tuple[str, ...]] = ("", ())


def words_of(text: str) -> tuple[str, ...]:
    """Words and punctuation as spaCy's English tokenizer splits them (what datatrove's Gopher filters
    count); without spaCy, a regex that keeps URLs and e-mail addresses whole and splits punctuation.

    Tokenised once per text: the steps that count words (Gopher quality, then repetition) see the same
    text in a row, so the last split is kept and reused; spaCy's split is most of their time."""
    global _LAST_WORDS
    if _LAST_WORDS[0] is text or _LAST_WORDS[0] == text:
        return _LAST_WORDS[1]
    nlp = _spacy()
    words = tuple(t.text for t in nlp.tokenizer(text) if not t.is_space) if nlp else tuple(_WORD.findall(text))
    _LAST_WORDS = (text, words)
    return words


def count_sentences(text: str) -> int:
    """Sentences as spaCy's rule-based sentencizer splits them (what datatrove's C4 filter counts):
    a sentence ends at a `.`, `!` or `?` token, and spaCy's English tokenizer keeps abbreviations
    ("e.g.", "U.S.", "Dr.") and decimals whole, so they end nothing. Needs spaCy (a dependency)."""
    return sum(1 for s in _spacy()(text).sents if s.text.strip())
