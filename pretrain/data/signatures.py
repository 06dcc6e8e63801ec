"""Dedup signatures, numpy-vectorised: shingle hashes, MinHash band hashes, exact hashes, Jaccard.

- Normalised text (`normalise`: FineWeb's, lowercase, no accents, punctuation or digits) is what the
  exact hash and the shingles see, so copies that differ only in case or punctuation are duplicates.
- Shingles: word n-grams of the normalised text (applied by the caller, once per document), each
  hashed to 32 bits with xxh32, kept as a sorted unique array: the set that Jaccard is measured on.
- MinHash: permutation i is h_i(x) = (a_i x + b_i) mod (2^61 - 1) with 32-bit a_i, b_i and x, so
  a_i x + b_i < 2^64 never overflows; the signature is the minimum over the shingles.
- Bands: `bands` groups of `rows` consecutive values, each hashed to 64 bits (xxh64); two documents
  that agree on any band are candidates, and a candidate is only a duplicate once its real Jaccard
  on the shingle sets is checked (`global_dedup`).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import xxhash

MERSENNE = np.uint64((1 << 61) - 1)
_NON_WORD = re.compile(r"[^\w\s]|\d", re.UNICODE)


def normalise(text: str) -> str:
    """Lowercase, strip accents, punctuation and digits, collapse whitespace."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(_NON_WORD.sub(" ", text).split())


def shingle_hashes(normalised: str, ngram: int) -> np.ndarray:
    """The shingle set of a text already passed through `normalise`."""
    words = normalised.split()
    grams = {" ".join(words[i: i + ngram]) for i in range(max(1, len(words) - ngram + 1))}
    return np.unique(np.fromiter((xxhash.xxh32_intdigest(g.encode()) for g in grams), np.uint64, len(grams))).astype(np.uint32)


def exact_hash(normalised: str) -> int:
    return xxhash.xxh64_intdigest(normalised.encode())


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if not a.size and not b.size:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


class MinHasher:
    def __init__(self, num_perm: int, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 32, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        if not shingles.size:
            return np.full(self.a.size, 0xFFFFFFFF, np.uint64)
        x = shingles.astype(np.uint64)[None, :]
        return ((self.a[:, None] * x + self.b[:, None]) % MERSENNE).min(axis=1)

    def band_hashes(self, shingles: np.ndarray, bands: int) -> list[int]:
        sig = self.signature(shingles).reshape(bands, -1)
        return [xxhash.xxh64_intdigest(row.tobytes(), seed=i) for i, row in enumerate(sig)]
