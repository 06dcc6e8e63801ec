"""The end of the first pass: a task's kept documents and everything global dedup needs of them.

Per task: the kept documents (JSON lines), an index row each, their ids, their shingle hashes (for
the Jaccard checks), and their signatures, one file per LSH band and one for exact hashes, each
sorted by (hash, key) so the bucket pass can merge the tasks' files as streams. Every file is
written atomically (`planner.core.io`: complete or absent); the executor writes the task's
completion marker after that, so a rerun skips finished tasks and redoes killed ones whole.
"""

from __future__ import annotations

import json

import numpy as np
from datatrove.pipeline.base import PipelineStep

from planner.core.io import atomic_open, atomic_write_json
from pretrain.data.dedup.arrays import INDEX_DTYPE, save_array, sorted_pairs
from pretrain.data.dedup.minhash import MinHashConfig
from pretrain.data.dedup.signatures import exact_hash, normalise, shingle_hashes
from pretrain.data.workdir import EXACT, WorkDir, band_name


class WriteTaskOutput(PipelineStep):
    """Kept documents, their dedup signatures per band and exact hash, and their shingle hashes."""

    name, type = "write task output", "💽 - WRITER"

    def __init__(self, wd: WorkDir, domains: list[str], minhash: MinHashConfig):
        super().__init__()
        self.wd, self.domains, self.minhash = wd, domains, minhash

    def run(self, data, rank: int = 0, world_size: int = 1):
        mh, wd = self.minhash, self.wd
        hasher = mh.hasher()
        index, ids, shingles, band_rows, exact_rows = [], [], [], [[] for _ in range(mh.bands)], []
        offset = 0
        with atomic_open(wd.kept(rank)) as sink:
            for d in data:
                key = d.metadata["key"]
                sink.write(json.dumps({"key": key, "id": d.id, "domain": d.metadata["domain"], "text": d.text}) + "\n")
                text = normalise(d.text)  # once, for the shingles and the exact hash
                sh = shingle_hashes(text, mh.ngram)
                shingles.append(sh)
                index.append((key, self.domains.index(d.metadata["domain"]), len(d.text), offset, sh.size))
                ids.append(d.id)
                offset += sh.size
                exact_rows.append((exact_hash(text), key))
                for b, h in enumerate(hasher.band_hashes(sh, mh.bands)):
                    band_rows[b].append((h, key))
                self.stat_update("kept")
        save_array(wd.index(rank), np.array(index, dtype=INDEX_DTYPE))
        atomic_write_json(wd.ids(rank), ids)
        save_array(wd.shingles(rank), np.concatenate(shingles) if shingles else np.zeros(0, np.uint32))
        save_array(wd.band(EXACT, rank), sorted_pairs(exact_rows))
        for b, rows in enumerate(band_rows):
            save_array(wd.band(band_name(b), rank), sorted_pairs(rows))
        return iter(())
