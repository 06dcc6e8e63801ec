"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash LSH, datasketch).

Defaults follow FineWeb (Penedo et al. 2024): word 5-gram shingles of normalised text, 112
permutations as 14 bands x 8 rows, so documents with Jaccard similarity above ~(1/14)^(1/8) ≈ 0.72
are likely caught (P ≈ 0.92 at 0.8). The first document seen is kept, the later ones dropped.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from pretrain.data.documents import Document
from pretrain.data.filters import Step

_NON_WORD = re.compile(r"[^\w\s]|\d", re.UNICODE)


def normalise(text: str) -> str:
    """Lowercase, strip accents, punctuation and digits, collapse whitespace."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(_NON_WORD.sub(" ", text).split())


class ExactDedup(Step):
    name = "exact_dedup"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bytes] = set()

    def key(self, text: str) -> bytes:
        return hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()

    def remember(self, doc: Document) -> None:
        self.seen.add(self.key(doc.text))

    def reject(self, doc: Document) -> str | None:
        key = self.key(doc.text)
        if key in self.seen:
            return "exact duplicate"
        self.seen.add(key)
        return None


class MinHashDedup(Step):
    name = "minhash_dedup"

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        from datasketch import MinHashLSH

        super().__init__()
        self.ngram, self.num_perm, self.seed = ngram, bands * rows, seed
        self.lsh = MinHashLSH(num_perm=self.num_perm, params=(bands, rows))
        self.count = 0

    def signature(self, text: str):
        from datasketch import MinHash

        words = normalise(text).split()
        shingles = {" ".join(words[i: i + self.ngram]) for i in range(max(1, len(words) - self.ngram + 1))}
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([s.encode() for s in shingles])
        return m

    def remember(self, doc: Document) -> None:
        self.lsh.insert(f"d{self.count}", self.signature(doc.text))
        self.count += 1

    def reject(self, doc: Document) -> str | None:
        sig = self.signature(doc.text)
        if self.lsh.query(sig):
            return "near duplicate"
        self.lsh.insert(f"d{self.count}", sig)
        self.count += 1
        return None
