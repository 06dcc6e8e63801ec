"""Deduplication over the whole corpus as three passes with state on disk (after the first pass,
whose `dedup.write.WriteTaskOutput` wrote each task's signatures sorted per band):

1. `BucketBands` (one task per band, plus one for exact hashes): a streamed k-way merge of the tasks'
   sorted files; documents that share a band hash are candidate pairs. Memory: one block per file.
2. `VerifyDuplicates` (one task): every candidate pair's Jaccard similarity is measured on the two
   documents' shingle sets (read from the tasks' files on disk), then, in the corpus's key order, a
   document is dropped when it is an exact duplicate of, or has Jaccard >= `threshold` with, an earlier
   document that is kept ("the first copy is kept", checked on the real Jaccard).
   Memory: the candidate pairs and the shingles of the documents in them, not the corpus.
3. `ApplyExclusions` (the first pass's tasks): each task drops its documents that pass 2 excluded and
   writes its curated output per domain and its exclusion list (every dropped document, the step and
   reason, and for duplicates the id and key of the document it duplicates, with the Jaccard).
"""

from __future__ import annotations

import contextlib
import heapq
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from planner.core.io import atomic_open, atomic_write_json, atomic_write_text
from pretrain.data.chunks import file_of_key
from pretrain.data.dedup.arrays import PAIRS_DTYPE, save_array
from pretrain.data.dedup.signatures import jaccard
from pretrain.data.workdir import EXACT, WorkDir, load_array

ALL_PAIRS_UP_TO = 50  # a bucket this small gives every pair; a larger one, each member with the first and the previous
BLOCK = 1 << 16


def _stream(path: Path):
    arr = load_array(path, mmap=True)
    for start in range(0, len(arr), BLOCK):
        block = np.asarray(arr[start: start + BLOCK])
        yield from zip(block["hash"].tolist(), block["key"].tolist(), strict=True)


def bucket_pairs(files: list[Path]) -> np.ndarray:
    """Candidate pairs (a < b) among documents sharing a hash, from files each sorted by (hash, key)."""
    pairs: list[tuple[int, int]] = []
    group: list[int] = []
    last = None

    def flush():
        if len(group) <= ALL_PAIRS_UP_TO:
            pairs.extend((group[i], group[j]) for j in range(1, len(group)) for i in range(j))
        else:
            pairs.extend((group[0], k) for k in group[1:])
            pairs.extend((group[j - 1], group[j]) for j in range(2, len(group)))

    for h, key in heapq.merge(*(_stream(f) for f in files)):
        if h != last:
            flush()
            group, last = [], h
        group.append(key)
    flush()
    return np.unique(np.array(pairs, dtype=PAIRS_DTYPE))


class BucketBands(PipelineStep):
    name, type = "bucket bands", "🫂 - DEDUP"

    def __init__(self, wd: WorkDir):
        super().__init__()
        self.wd = wd

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        for band in self.wd.band_names()[rank::world_size]:
            self.wd.check_bands(band)
            pairs = bucket_pairs(self.wd.band_files(band))
            save_array(self.wd.pairs(band), pairs)
            self.stat_update("candidate pairs", value=len(pairs))
        return iter(())


class VerifyDuplicates(PipelineStep):
    name, type = "verify duplicates", "🫂 - DEDUP"

    def __init__(self, wd: WorkDir, domains: list[str], threshold: float, exact: bool = True, near: bool = True):
        super().__init__()
        self.wd, self.domains, self.threshold = wd, domains, threshold
        self.exact, self.near = exact, near

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        wd = self.wd
        exact = load_array(wd.pairs(EXACT)) if self.exact else np.zeros(0, PAIRS_DTYPE)
        near = [load_array(p) for p in wd.near_pair_files() if self.near]
        near = np.unique(np.concatenate(near)) if near else np.zeros(0, PAIRS_DTYPE)
        docs = _lookup(wd, np.union1d(np.union1d(exact["a"], exact["b"]), np.union1d(near["a"], near["b"])))
        dropped = self._duplicates(exact, near, docs)
        by_task = defaultdict(list)
        for key, d in sorted(dropped.items()):
            info, of = docs[key], docs[d["of"]]
            by_task[info["task"]].append({"key": key, "id": info["id"], "domain": info["domain"], "step": d["step"],
                                          "reason": d["reason"], "duplicate_of": of["id"], "duplicate_of_key": d["of"],
                                          "jaccard": d["jaccard"], "chars": info["chars"]})
        for task in wd.tasks():
            atomic_write_json(wd.dedup(task), by_task.get(task, []))
        self.stat_update("candidate pairs", value=len(exact) + len(near))
        self.stat_update("dropped", value=len(dropped))
        return iter(())

    def _duplicates(self, exact: np.ndarray, near: np.ndarray, docs: dict[int, dict]) -> dict[int, dict]:
        """Dropped key -> why: exact first, over every document (the first of each group is kept),
        then near over the survivors, each against its earlier candidates on the real Jaccard."""
        exact_of = defaultdict(list)
        for a, b in exact.tolist():
            exact_of[b].append(a)
        near_of = defaultdict(list)
        for a, b in near.tolist():
            near_of[b].append(a)
        dropped: dict[int, dict] = {b: {"step": "exact_dedup", "reason": "exact duplicate", "of": min(a), "jaccard": 1.0}
                                    for b, a in exact_of.items()}
        for b in sorted(set(near_of) - set(dropped)):
            scored = [(jaccard(docs[a]["shingles"](), docs[b]["shingles"]()), a) for a in sorted(near_of.get(b, []))
                      if a not in dropped]
            scored = [(j, a) for j, a in scored if j >= self.threshold]
            if scored:
                j, a = max(scored, key=lambda t: (t[0], -t[1]))
                dropped[b] = {"step": "minhash_dedup", "reason": "near duplicate", "of": a, "jaccard": round(j, 6)}
        return dropped


def _lookup(wd: WorkDir, keys: np.ndarray) -> dict[int, dict]:
    """Task, id, domain, size and (lazily) shingles of the documents with these keys, one task's files at a time."""
    found: dict[int, dict] = {}
    for task in wd.tasks():
        index = load_array(wd.index(task))
        rows = np.nonzero(np.isin(index["key"], keys))[0]
        if not rows.size:
            continue
        ids = json.loads(wd.ids(task).read_text())
        shingles = load_array(wd.shingles(task), mmap=True)
        for r in rows.tolist():
            row = index[r]
            lo, n = int(row["offset"]), int(row["count"])
            found[int(row["key"])] = {"task": task, "id": ids[r], "domain": int(row["domain"]), "chars": int(row["chars"]),
                                      "shingles": lambda lo=lo, n=n, s=shingles: np.asarray(s[lo: lo + n])}
    return found


class ApplyExclusions(PipelineStep):
    name, type = "apply exclusions", "💽 - WRITER"

    def __init__(self, wd: WorkDir, domains: list[str], steps: list[str]):
        super().__init__()
        self.wd, self.domains, self.steps = wd, domains, steps

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        """The outputs of first-pass tasks rank, rank + world_size, ... (each is written as its own files)."""
        for task in self.wd.tasks()[rank::world_size]:
            self._apply(task)
        return iter(())

    def _apply(self, task: int) -> None:
        wd = self.wd
        dedup = json.loads(wd.dedup(task).read_text())
        for d in dedup:
            d["domain"] = self.domains[d["domain"]]
        kept = self._write_curated(task, {d["key"] for d in dedup})
        filtered = [json.loads(wd.stats(s, task).read_text())["excluded"] for s in self.steps]
        excluded = list(heapq.merge(*filtered, sorted(dedup, key=lambda d: d["key"]), key=lambda d: d["key"]))
        atomic_write_json(wd.final(task), {"kept_per_file": kept, "dedup": dedup})
        atomic_write_text(wd.task_exclusions(task), "".join(json.dumps(e) + "\n" for e in excluded))
        self.stat_update("kept", value=sum(docs for docs, _ in kept.values()))

    def _write_curated(self, rank: int, drop: set[int]) -> dict[int, list[int]]:
        """The task's curated file per domain; returns [docs, chars] kept per input file."""
        kept: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        with contextlib.ExitStack() as stack:  # each curated file appears complete when the stack closes
            sinks = {dom: stack.enter_context(atomic_open(self.wd.curated(dom, rank))) for dom in self.domains}
            with open(self.wd.kept(rank)) as f:
                for line in f:
                    rec = json.loads(line)
                    if rec["key"] in drop:
                        continue
                    sinks[rec["domain"]].write(json.dumps({"id": rec["id"], "text": rec["text"], "domain": rec["domain"],
                                                           "key": rec["key"]}) + "\n")
                    kept[file_of_key(rec["key"])][0] += 1
                    kept[file_of_key(rec["key"])][1] += len(rec["text"])
        return kept
