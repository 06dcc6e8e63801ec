"""The full curation chain against datatrove's equivalent chain: documents per CPU-second, same documents,
same executor (datatrove's LocalPipelineExecutor), same tasks and workers, measured in the same run.

Ours: `executors.curate` (Gopher quality, Gopher repetition, C4, PII; exact + MinHash dedup with every
candidate verified on its Jaccard; curated output and exclusion list). datatrove's: JsonlReader ->
GopherQualityFilter -> GopherRepetitionFilter -> C4QualityFilter -> PIIFormatter -> JsonlWriter ->
MinhashDedupSignature, then MinhashDedupBuckets, MinhashDedupCluster, and JsonlReader ->
MinhashDedupFilter -> JsonlWriter (its FineWeb recipe). Language identification is off on both
sides: datatrove's LanguageFilter needs fastText's lid.176 model from the hub, which this machine
cannot reach. Each chain runs in its own process; its CPU time (user + system, all its worker
processes included) comes from the kernel's accounting of that process tree. Target: ours
>= 2x datatrove's documents per CPU-second.

    .venv/bin/python benchmarks/bench_curate_chain.py [--docs 2400] [--tasks 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from pretrain.data.sample_corpus import write_sample

REPO = Path(__file__).resolve().parents[1]

OURS = """
import json, sys
from pretrain.data.config import load_pipeline_config
from pretrain.data.executors import curate
cfg = load_pipeline_config(sys.argv[1], ["out_dir=" + sys.argv[2], "curate.language=false"])
report = curate(cfg, "local", int(sys.argv[3]), 1)
print(json.dumps({"docs_in": sum(d["docs_in"] for d in report["domains"].values()),
                  "docs_out": sum(d["docs_out"] for d in report["domains"].values())}))
"""

PEER = """
import json, sys
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                      MinhashDedupSignature)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
data, out, tasks = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
mh = MinhashConfig()
def run(pipeline, n, name):
    LocalPipelineExecutor(pipeline, tasks=n, workers=1, logging_dir=str(out / "logs" / name)).run()
run([JsonlReader(data, glob_pattern="*.jsonl"), GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(),
     PIIFormatter(), JsonlWriter(str(out / "filtered"), compression=None),
     MinhashDedupSignature(str(out / "sigs"), config=mh)], tasks, "signatures")
run([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=mh)], mh.num_buckets, "buckets")
run([MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=mh)], 1, "clusters")
run([JsonlReader(str(out / "filtered"), compression=None), MinhashDedupFilter(str(out / "remove")),
     JsonlWriter(str(out / "final"), compression=None)], tasks, "filter")
docs_in = sum(1 for p in Path(data).glob("*.jsonl") for _ in p.open())
docs_out = sum(1 for p in (out / "final").glob("*.jsonl") for _ in p.open())
print(json.dumps({"docs_in": docs_in, "docs_out": docs_out}))
"""


def timed(script: str, *args: str) -> dict:
    """Run `script` in a fresh interpreter; its result plus the CPU seconds of its whole process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2400)
    ap.add_argument("--tasks", type=int, default=2)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    write_sample(root / "data", docs_per_domain=a.docs // 2)
    config = root / "curate.yaml"
    config.write_text(f"sources: [{{path: {root / 'data/finance.jsonl'}, domain: finance}}, "
                      f"{{path: {root / 'data/general.jsonl'}, domain: general}}]\ncurate: {{chunk_bytes: 65536}}\n")
    timed(OURS, str(config), str(root / "warm"), "1")  # page cache and bytecode warm for both
    ours = timed(OURS, str(config), str(root / "ours"), str(a.tasks))
    peer = timed(PEER, str(root / "data"), str(root / "peer"), str(a.tasks))
    rate = {k: v["docs_in"] / v["cpu_s"] for k, v in (("ours", ours), ("peer", peer))}
    print(f"{ours['docs_in']:,} documents, {a.tasks} tasks, 1 worker; language identification off on both sides")
    print(f"  ours      {ours['cpu_s']:6.1f} CPU-s  {rate['ours']:6.0f} docs/CPU-s  kept {ours['docs_out']:,}")
    print(f"  datatrove {peer['cpu_s']:6.1f} CPU-s  {rate['peer']:6.0f} docs/CPU-s  kept {peer['docs_out']:,}")
    print(f"  ratio ours/datatrove {rate['ours'] / rate['peer']:.2f} (target >= 2)")


if __name__ == "__main__":
    main()
