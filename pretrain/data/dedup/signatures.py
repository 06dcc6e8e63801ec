"""What dedup compares, numpy-vectorised: normalised text, shingle sets, exact hashes, Jaccard.

- Normalised text (`normalise`: FineWeb's, lowercase, no accents, punctuation or digits) is what the
  exact hash and the shingles see, so copies that differ only in case or punctuation are duplicates.
- Shingles: word n-grams of the normalised text (applied by the caller, once per document), each
  hashed to 32 bits with xxh32, kept as a sorted unique array: the set that Jaccard is measured on,
  and that MinHash (`minhash`) summarises.
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
