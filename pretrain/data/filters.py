"""Curation steps: each a small object with a name, a decision per document, and its own counts.

Thresholds default to the papers' (ANCHORS.md §1) and every one is a constructor argument, so a
domain can have its own (number-heavy finance filings fail the alphabetic-word rule at 0.8).
- Gopher quality and repetition: Rae et al. 2021 (MassiveText), §A.1 and Table A1.
- C4: Raffel et al. 2020, §2.2 (line and document rules).
- Language: py3langid (langid.py, Lui & Baldwin 2012), whose model ships inside the package; keep >= 0.65
  (datatrove's default with fastText lid.176).
- PII: e-mail addresses, phone numbers and public IP addresses replaced by placeholders, counted.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field

from pretrain.data.documents import Document

PUNCTUATION = set(string.punctuation) | set("“”‘’«»–—…•·")
#: Gopher's stop words (Rae et al. 2021, §A.1.1): a document must contain at least two.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
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


@dataclass
class StepStats:
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
        words = words_of(text)
        total = len(text)  # "fraction of characters" of the document (Rae et al. 2021, Table A1)
        for n, limit in self.top_ngram:
            if _top_ngram_chars(words, n) / total > limit:
                return f"top {n}-gram"
        for n, limit in self.dup_ngram:
            if _duplicated_ngram_chars(words, n, self.dup_ngram_counting) / total > limit:
                return f"duplicated {n}-grams"
        return None


_C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_C4_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_C4_END = (".", "?", "!", '"', "'")


def count_sentences(text: str) -> int:
    """Sentences as spaCy's rule-based sentencizer splits them (what datatrove's C4 filter counts):
    a sentence ends at a `.`, `!` or `?` token, and spaCy's English tokenizer keeps abbreviations
    ("e.g.", "U.S.", "Dr.") and decimals whole, so they end nothing. Needs spaCy (a dependency)."""
    return sum(1 for s in _spacy()(text).sents if s.text.strip())


#: C4's two document rules ("lorem ipsum", a curly bracket), checked where (see C4Rules)
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


_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_PHONE = re.compile(r"(?<!\w)(?:\+?\d{1,3}[\s.-])?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\w)")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")


def _public_ip(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    return not (ip.is_private or ip.is_loopback or ip.is_reserved or ip.is_multicast or ip.is_link_local)


class PIIRedactor(Step):
    """Replaces e-mail addresses, phone numbers and public IPv4 addresses; never drops a document."""

    name = "pii"
    EMAIL, PHONE, IP = "<EMAIL>", "<PHONE>", "<IP_ADDRESS>"

    def reject(self, doc: Document) -> str | None:
        changed = self.stats.setdefault(doc.domain, StepStats()).changed
        text, n = _EMAIL.subn(self.EMAIL, doc.text)
        changed["emails"] += n
        text, n = _PHONE.subn(self.PHONE, text)
        changed["phone numbers"] += n

        def ip(match: re.Match) -> str:
            if _public_ip(match.group(0)):
                changed["ip addresses"] += 1
                return self.IP
            return match.group(0)

        doc.text = _IPV4.sub(ip, text)
        return None
