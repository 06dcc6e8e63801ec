"""Curation on datatrove's local executor: memory per worker as the corpus grows, and worker scaling.

- Memory: the generated finance + general corpus at 1x and 4x, the same chunk size (so 4x the tasks);
  peak RSS of the busiest worker process must stay within 20%. Baseline: the 1x run.
- Scaling: the 4x corpus on 1 worker and on 2 workers (this machine has 2 cores); the speed-up is the
  ratio of wall-clocks (target >= 1.7x).

    .venv/bin/python benchmarks/bench_curate_scale.py [--docs 2400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pretrain.data.sample_corpus import write_sample

REPO = Path(__file__).resolve().parents[1]
CHUNK = 256 << 10

RUN = """
import json, resource, sys, time
from pretrain.data.config import load_pipeline_config
from pretrain.data.executors import curate
cfg = load_pipeline_config(sys.argv[1], ["out_dir=" + sys.argv[2], "curate.chunk_bytes=" + sys.argv[5]])
t = time.perf_counter()
report = curate(cfg, "local", int(sys.argv[3]), int(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - t,
                  "docs": sum(d["docs_in"] for d in report["domains"].values()),
                  "worker_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "driver_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def corpus(root: Path, docs: int) -> tuple[Path, int]:
    write_sample(root, docs_per_domain=docs // 2)
    size = sum(p.stat().st_size for p in root.glob("*.jsonl"))
    config = root / "curate.yaml"
    config.write_text(f"sources: [{{path: {root / 'finance.jsonl'}, domain: finance}}, "
                      f"{{path: {root / 'general.jsonl'}, domain: general}}]\n")
    return config, size


def run(config: Path, out: Path, tasks: int, workers: int) -> dict:
    r = subprocess.run([sys.executable, "-c", RUN, str(config), str(out), str(tasks), str(workers), str(CHUNK)], cwd=REPO,
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2400, help="documents in the 1x corpus")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    small, small_bytes = corpus(root / "x1", a.docs)
    large, large_bytes = corpus(root / "x4", 4 * a.docs)
    tasks_small = max(1, -(-small_bytes // CHUNK))
    tasks_large = max(1, -(-large_bytes // CHUNK))
    start = time.perf_counter()
    r1 = run(small, root / "o1", tasks_small, 1)
    r4 = run(large, root / "o4", tasks_large, 1)
    r4w2 = run(large, root / "o4w2", tasks_large, 2)
    print(f"corpus 1x: {r1['docs']:,} docs, {small_bytes / 2**20:.1f} MiB, {tasks_small} tasks of <= {CHUNK >> 10} KiB; "
          f"4x: {r4['docs']:,} docs, {large_bytes / 2**20:.1f} MiB, {tasks_large} tasks")
    print(f"peak worker RSS: 1x {r1['worker_rss_kb'] / 1024:.0f} MiB, 4x {r4['worker_rss_kb'] / 1024:.0f} MiB: "
          f"ratio {r4['worker_rss_kb'] / r1['worker_rss_kb']:.2f} (target <= 1.20); driver 1x "
          f"{r1['driver_rss_kb'] / 1024:.0f} MiB, 4x {r4['driver_rss_kb'] / 1024:.0f} MiB")
    print(f"4x corpus: 1 worker {r4['seconds']:.1f} s ({r4['docs'] / r4['seconds']:.0f} docs/s), 2 workers "
          f"{r4w2['seconds']:.1f} s: speed-up {r4['seconds'] / r4w2['seconds']:.2f}x (target >= 1.7x)")
    print(f"(bench wall-clock {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
