"""Synthetic corpora: token sequences from random Markov chains, with no tokenizer and no download.

- `markov` (tests and smoke runs): each token has 4 successors, uniformly; loss falls from ln V
  toward ln 4.
- `dense` (the scaling ladder's source): a first-order chain whose every row is a full random
  distribution over the vocabulary, softmax(z / T) with z ~ N(0, 1). Its entropy rate is known
  exactly, H = sum_i pi_i H(P_i) with pi the stationary distribution (`dense_entropy_rate`), and
  rows start in stationarity, so the best possible eval loss is H: the irreducible loss E a fitted
  law must find. A model learns the V x V table of log-probabilities through a width-h bottleneck
  (embedding -> blocks -> head), so its loss depends on its size as well as on its tokens: a
  ladder sees both terms of L(N, D) = E + A/N^alpha + B/D^beta.

Real text goes through `pretrain.data` curation and tokenizers.

    python -m pretrain.data.synthetic OUT_DIR [--source markov|dense] [--vocab 256] [--seq-len 64] [--rows 2048]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from planner.core import checks
from planner.core.errors import PlannerError, guarded, one_line_parser
from pretrain.data.shards import ShardWriter


def markov_tokens(vocab: int, length: int, rng: np.random.Generator, branching: int = 4) -> np.ndarray:
    """Each token is followed by one of `branching` successors fixed per token (seeded)."""
    successors = np.random.default_rng(12345).integers(1, vocab, size=(vocab, branching))
    out = np.empty(length, dtype=np.int64)
    out[0] = rng.integers(1, vocab)
    choices = rng.integers(0, branching, size=length)
    for i in range(1, length):
        out[i] = successors[out[i - 1], choices[i]]
    return out


#: Seed of the dense chain's transition table: one fixed language, whatever the sample's seed.
DENSE_TABLE_SEED = 2024


def dense_transitions(vocab: int, temperature: float) -> np.ndarray:
    """The dense chain's V x V transition matrix (rows sum to 1); token 0 is a state like any other."""
    z = np.random.default_rng(DENSE_TABLE_SEED).standard_normal((vocab, vocab)) / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def stationary(p: np.ndarray) -> np.ndarray:
    """pi with pi P = pi: the left eigenvector of eigenvalue 1 (the chain is irreducible: every entry > 0)."""
    values, vectors = np.linalg.eig(p.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    return pi / pi.sum()


def dense_entropy_rate(vocab: int, temperature: float) -> float:
    """Exact entropy rate in nats per token: sum_i pi_i * H(P_i)."""
    p = dense_transitions(vocab, temperature)
    return float(stationary(p) @ -(p * np.log(p)).sum(axis=1))


def write_dense_shards(out_dir, vocab: int = 128, seq_len: int = 64, rows: int = 2048, seed: int = 0,
                       temperature: float = 0.5, rows_per_shard: int = 4096) -> dict:
    """`rows` independent stationary sequences of the dense chain (each row its own, no EOS)."""
    p = dense_transitions(vocab, temperature)
    cdf = np.cumsum(p, axis=1)
    rng = np.random.default_rng(seed)
    tokens = np.empty((rows, seq_len + 1), dtype=np.int64)
    tokens[:, 0] = rng.choice(vocab, size=rows, p=stationary(p))
    u = rng.random((rows, seq_len))
    for t in range(seq_len):  # all rows step together: vectorised inverse-CDF sampling
        nxt = (u[:, t, None] > cdf[tokens[:, t]]).sum(axis=1)
        tokens[:, t + 1] = np.minimum(nxt, vocab - 1)
    writer = ShardWriter(out_dir, seq_len, vocab, eos_id=0, rows_per_shard=rows_per_shard)
    for row in tokens:
        writer.add_row(row, domain="synthetic")
    rate = dense_entropy_rate(vocab, temperature)
    return writer.close({"source": "synthetic-dense-markov", "seed": seed, "temperature": temperature,
                         "entropy_rate_nats": rate})


def write_markov_shards(out_dir, vocab: int = 256, seq_len: int = 64, rows: int = 2048, seed: int = 0,
                        rows_per_shard: int = 1024) -> dict:
    """Write `rows` rows of a Markov-chain corpus (token 0 is EOS) as a shard folder."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(out_dir, seq_len, vocab, eos_id=0, rows_per_shard=rows_per_shard)
    doc_len = 4 * seq_len
    while sum(s["rows"] for s in writer.shards) + len(writer._rows) < rows:
        writer.add(markov_tokens(vocab, doc_len, rng).tolist(), domain="synthetic")
    return writer.close({"source": "synthetic-markov", "seed": seed})


def main(argv: list[str] | None = None) -> int:
    p = one_line_parser("synthetic", __doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--source", choices=("markov", "dense"), default="markov")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="Write into a folder that already holds files.")
    a = p.parse_args(argv)

    def run() -> None:
        out = Path(a.out_dir)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not a.force:
            raise PlannerError(f"out_dir: {out} is not an empty folder (an earlier dataset would be replaced); "
                               "choose a new folder or pass --force")
        checks.integer("--vocab", a.vocab, 2, 4096 if a.source == "dense" else 1 << 32)  # dense: a V x V table
        checks.integer("--seq-len", a.seq_len, 2, 1 << 20)
        checks.integer("--rows", a.rows, 1, 1 << 31)
        write = write_dense_shards if a.source == "dense" else write_markov_shards
        m = write(a.out_dir, a.vocab, a.seq_len, a.rows, a.seed)
        rate = f"; entropy rate {m['entropy_rate_nats']:.4f} nats/token" if "entropy_rate_nats" in m else ""
        print(f"wrote {m['rows']} rows x {m['seq_len'] + 1} tokens to {a.out_dir}{rate}")

    return guarded("synthetic", run)


if __name__ == "__main__":
    sys.exit(main())
