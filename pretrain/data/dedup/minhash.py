"""The one MinHash config of a curation, and the MinHash that uses it.

- `MinHashConfig`: shingle size, Jaccard threshold, bands x rows and seed; the banding follows from
  the threshold (`recall_banding`), so nothing else in the pipeline picks MinHash numbers.
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

from dataclasses import dataclass

import numpy as np
import xxhash

from pretrain.data.config import CurateConfig

#: Permutations the banding may use at most, the recall it must reach at the threshold, the hash seed.
NUM_PERM, MIN_RECALL, SEED = 100, 0.999, 1


def recall_banding(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) with P(candidate | J = threshold) = 1 - (1 - J^rows)^bands >= MIN_RECALL, and as many
    rows as that allows (fewer false candidates). Every candidate is verified on its real Jaccard, so a
    false candidate costs only a check, while a missed one is a duplicate kept: banding is set for recall.
    For 0.8: 20 bands x 5 rows, P = 0.9996 (FineWeb's unverified 14 x 8 gives 0.92)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= MIN_RECALL:
            best = (bands, rows)
    return best


@dataclass(frozen=True)
class MinHashConfig:
    """Every MinHash parameter of one curation; built from `curate:` by `of`."""

    ngram: int  # word n-gram shingles
    threshold: float  # a candidate is a near duplicate when its Jaccard reaches this
    bands: int
    rows: int
    seed: int = SEED

    @classmethod
    def of(cls, c: CurateConfig) -> MinHashConfig:
        return cls(c.minhash_ngram, c.jaccard_threshold, *recall_banding(c.jaccard_threshold))

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def hasher(self) -> MinHasher:
        return MinHasher(self.num_perm, self.seed)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """Vigna's splitmix64 finaliser (uint64 arithmetic wraps, as it is meant to)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class MinHasher:
    def __init__(self, num_perm: int, seed: int = SEED):
        self.seeds = np.random.default_rng(seed).integers(0, 1 << 63, num_perm, dtype=np.uint64) << np.uint64(1)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        if not shingles.size:
            return np.full(self.seeds.size, np.iinfo(np.uint64).max, np.uint64)
        with np.errstate(over="ignore"):
            return splitmix64(self.seeds[:, None] ^ shingles.astype(np.uint64)[None, :]).min(axis=1)

    def band_hashes(self, shingles: np.ndarray, bands: int) -> list[int]:
        sig = self.signature(shingles).reshape(bands, -1)
        return [xxhash.xxh64_intdigest(row.tobytes(), seed=i) for i, row in enumerate(sig)]
