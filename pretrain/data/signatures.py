"""Dedup signatures, numpy-vectorised: shingle hashes, MinHash band hashes, exact hashes, Jaccard.

- Normalised text (`normalise`: FineWeb's, lowercase, no accents, punctuation or digits) is what the
  exact hash and the shingles see, so copies that differ only in case or punctuation are duplicates.
- Shingles: word n-grams of the normalised text (applied by the caller, once per document), each
  hashed to 32 bits with xxh32, kept as a sorted unique array: the set that Jaccard is measured on.
- MinHash: permutation i is h_i(x) = splitmix64(x XOR s_i) with a random 64-bit seed s_i per
  permutation: splitmix64's finaliser is a bijection of 64-bit integers that mixes every input bit
  into every output bit, so the h_i act as independent random permutations and P(min agrees) = J.
  (A linear (a x + b) mod (2^61 - 1) with 32-bit a, b and x is not: a x < 2^64 wraps the prime at
  most 8 times, so the hash is piecewise monotone in x and every permutation picks about the same
  smallest shingles. On real docstrings at J = 0.85 it agreed on 41% of the values instead of ~85%,
  and missed 1.5% of the duplicates at J >= 0.8: `benchmarks/bench_dedup_recall.py`.)
  The signature is the minimum over the shingles.
- Bands: `bands` groups of `rows` consecutive values, each hashed to 64 bits (xxh64); two documents
  that agree on any band are candidates, and a candidate is only a duplicate once its real Jaccard
  on the shingle sets is checked (`global_dedup`).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import xxhash

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


def splitmix64(z: np.ndarray) -> np.ndarray:
    """Vigna's splitmix64 finaliser (uint64 arithmetic wraps, as it is meant to)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class MinHasher:
    def __init__(self, num_perm: int, seed: int = 1):
        self.seeds = np.random.default_rng(seed).integers(0, 1 << 63, num_perm, dtype=np.uint64) << np.uint64(1)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        if not shingles.size:
            return np.full(self.seeds.size, np.iinfo(np.uint64).max, np.uint64)
        with np.errstate(over="ignore"):
            return splitmix64(self.seeds[:, None] ^ shingles.astype(np.uint64)[None, :]).min(axis=1)

    def band_hashes(self, shingles: np.ndarray, bands: int) -> list[int]:
        sig = self.signature(shingles).reshape(bands, -1)
        return [xxhash.xxh64_intdigest(row.tobytes(), seed=i) for i, row in enumerate(sig)]
