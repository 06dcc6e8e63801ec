"""Global dedup against the exact answer on a large real corpus: precision and recall at J >= 0.8.

Corpus: every docstring of 50 words or more in the installed packages (the project's own venv:
numpy, scipy, torch, mlflow, ray, ...): tens of thousands of real English documents with natural
duplicates (overloads that share a docstring, vendored copies, edited copies).

Ours: `curate` on datatrove's local executor (8 tasks, 2 workers), every per-document step off, so
the exclusion list holds only exact and near duplicates. The exact answer, computed here in the
same run with the same rule (exact copies of the normalised text first, the first kept; then a
document is a near duplicate when the Jaccard of its word 5-gram sets with an earlier kept document
is >= 0.8): every pair at J >= 0.8 is found by an exact set-similarity join (prefix filtering,
Bayardo et al. 2007: two sets with J >= t share a shingle among the first |s| - ceil(t |s|) + 1 of
each, shingles ranked rarest first) and measured on the shingle strings. Target: >= 99%.

    .venv/bin/python benchmarks/bench_dedup_recall.py [--docs N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from pretrain.data import installed_text
from pretrain.data.dedup.signatures import normalise

REPO = Path(__file__).resolve().parents[1]
THRESHOLD, NGRAM = 0.8, 5


def docstrings(limit: int | None) -> list[tuple[str, str]]:
    """The installed packages' docstrings of 50 words or more (`installed_text`), the first `limit`."""
    return list(itertools.islice(installed_text.docstrings((Path(sysconfig.get_paths()["purelib"]),)), limit))


def shingles(text: str) -> frozenset[str]:
    w = normalise(text).split()
    return frozenset(" ".join(w[i: i + NGRAM]) for i in range(max(1, len(w) - NGRAM + 1)))


def exact_copies(docs: list[tuple[str, str]]) -> tuple[set[str], list[tuple[str, frozenset[str]]]]:
    """The rule's first half: later copies of a normalised text dropped; the survivors with their shingles."""
    seen, survivors, dropped = set(), [], set()
    for doc_id, text in docs:
        key = normalise(text)
        if key in seen:
            dropped.add(doc_id)
        else:
            seen.add(key)
            survivors.append((doc_id, shingles(text)))
    return dropped, survivors


def exact_answer(docs: list[tuple[str, str]]) -> set[str]:
    """The ids the rule drops, from every pair at J >= THRESHOLD (prefix-filtered join, then measured)."""
    dropped, survivors = exact_copies(docs)
    freq = Counter(s for _, sh in survivors for s in sh)
    index: dict[str, list[int]] = defaultdict(list)
    similar: dict[int, list[int]] = defaultdict(list)  # later -> earlier documents at J >= THRESHOLD
    for i, (_, sh) in enumerate(survivors):
        ranked = sorted(sh, key=lambda s: (freq[s], s))
        prefix = ranked[: len(ranked) - math.ceil(THRESHOLD * len(ranked)) + 1]
        candidates = {j for s in prefix for j in index[s]}
        for j in candidates:
            other = survivors[j][1]
            if len(sh & other) / len(sh | other) >= THRESHOLD:
                similar[i].append(j)
        for s in prefix:
            index[s].append(i)
    kept: set[int] = set()
    for i, (doc_id, _) in enumerate(survivors):
        if any(j in kept for j in similar[i]):
            dropped.add(doc_id)
        else:
            kept.add(i)
    return dropped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=None, help="at most this many docstrings (default: all)")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    docs = docstrings(a.docs)
    source = root / "docstrings.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    config = root / "c.yaml"
    config.write_text(f"sources: [{{path: {source}, domain: code}}]\ncurate: {{gopher_quality: false, "
                      "gopher_repetition: false, c4: false, language: false, pii: false, chunk_bytes: 4194304}\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pretrain.data.pipeline", str(config), "curate", f"out_dir={root / 'out'}",
                    "--quiet", "--tasks", "8", "--workers", "2"], cwd=REPO, check=True, capture_output=True)
    ours_s = time.perf_counter() - start
    ours = {json.loads(line)["id"] for line in (root / "out/exclusions.jsonl").read_text().splitlines()}
    start = time.perf_counter()
    truth = exact_answer(docs)
    truth_s = time.perf_counter() - start
    hit = len(ours & truth)
    print(f"{len(docs):,} real docstrings ({source.stat().st_size / 2**20:.1f} MiB); the exact answer drops "
          f"{len(truth):,} ({truth_s:.0f} s), ours {len(ours):,} ({ours_s:.0f} s, 8 tasks on 2 workers)")
    print(f"precision {hit / max(1, len(ours)):.4f}, recall {hit / max(1, len(truth)):.4f} at J >= {THRESHOLD} "
          f"(target >= 0.99 each)")


if __name__ == "__main__":
    main()
