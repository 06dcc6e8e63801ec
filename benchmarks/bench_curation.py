"""Curation and tokenization throughput, each against its peer measured in the same run, one core.

- Curation: our Gopher quality + repetition steps against datatrove's GopherQualityFilter +
  GopherRepetitionFilter on the same documents (the shipped sample corpus), documents/s and MB/s.
  Target: at least as fast as datatrove per core. Also the whole curation chain.
- Tokenization + packing: `pack` (read curated text, batch encode, mix, write shards) against a
  plain `tokenizers` batch encode of the same documents that returns their ids (already in
  memory). Target: at least 90% of raw throughput.

    .venv/bin/python benchmarks/bench_curation.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers' thread pool: one core, like the rest

from pretrain.data.config import load_pipeline_config  # noqa: E402
from pretrain.data.documents import Document  # noqa: E402
from pretrain.data.executors import curate  # noqa: E402
from pretrain.data.mix import pack  # noqa: E402
from pretrain.data.steps.gopher import GopherQuality, GopherRepetition  # noqa: E402
from pretrain.data.tokenizer import train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPEAT = 3


def documents() -> list[tuple[str, str]]:
    out = []
    for name in ("finance.jsonl", "general.jsonl"):
        for line in (REPO / "data/sample" / name).read_text().splitlines():
            rec = json.loads(line)
            out.append((rec["id"], rec["text"]))
    return out * REPEAT


def rate(fn, docs) -> tuple[float, float]:
    start = time.perf_counter()
    fn(docs)
    seconds = time.perf_counter() - start
    return len(docs) / seconds, sum(len(t.encode()) for _, t in docs) / seconds / 1e6


def ours(docs) -> None:
    steps = [GopherQuality(), GopherRepetition()]
    for i, text in docs:
        d = Document(i, text, "x")
        for s in steps:
            if s.apply(d) is None:
                break


def datatrove(docs) -> None:
    from datatrove.data import Document as PeerDoc
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    steps = [GopherQualityFilter(), GopherRepetitionFilter()]
    for i, text in docs:
        d = PeerDoc(text=text, id=i)
        for s in steps:
            if s.filter(d) is not True:
                break


def main() -> None:
    docs = documents()
    ours(docs[:50])
    datatrove(docs[:50])  # warm both (spaCy's tokenizer loads once)
    ours_docs, ours_mb = rate(ours, docs)
    peer_docs, peer_mb = rate(datatrove, docs)
    print(f"Gopher quality+repetition, {len(docs):,} docs, 1 core:")
    print(f"  ours      {ours_docs:8,.0f} docs/s  {ours_mb:6.2f} MB/s")
    print(f"  datatrove {peer_docs:8,.0f} docs/s  {peer_mb:6.2f} MB/s   ratio ours/datatrove {ours_docs / peer_docs:.2f} "
          f"(target >= 1: {'OK' if ours_docs >= peer_docs else 'MISSED'})")
    with tempfile.TemporaryDirectory() as d:
        cfg = load_pipeline_config(REPO / "configs/data-sample.yaml", [f"out_dir={d}"])
        cfg.sources = [type(s)(**{**s.__dict__, "path": str(REPO / s.path)}) for s in cfg.sources]
        start = time.perf_counter()
        curate(cfg, quiet=True)
        full = time.perf_counter() - start
        raw_mb = sum((REPO / s.path).stat().st_size for s in cfg.sources) / 1e6
        print(f"  whole chain (quality, repetition, C4, language, PII, exact + MinHash dedup): "
              f"{raw_mb / full:.2f} MB/s of raw jsonl")
        train_tokenizer(cfg)
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(d) / cfg.tokenizer.path))
        texts = [json.loads(line)["text"] for p in sorted(Path(d, "curated").rglob("*.jsonl"))
                 for line in p.read_text().splitlines()]
        mb = sum(len(t.encode()) for t in texts) / 1e6
        tok.encode_batch(texts[:256])  # warm, as for pack
        start = time.perf_counter()
        for i in range(0, len(texts), 1024):
            [e.ids for e in tok.encode_batch(texts[i: i + 1024])]  # a batch encode that returns the ids
        raw = mb / (time.perf_counter() - start)
        pack(cfg, progress=False)  # warm: first-use imports are not throughput
        start = time.perf_counter()
        pack(cfg, progress=False)
        packed = mb / (time.perf_counter() - start)
        print(f"Tokenization, {mb:.2f} MB of curated text, 1 thread:")
        print(f"  plain tokenizers encode_batch -> ids {raw:6.2f} MB/s")
        print(f"  pack (encode + mix + shards)  {packed:6.2f} MB/s   ratio {packed / raw:.2f} "
              f"(target >= 0.9: {'OK' if packed / raw >= 0.9 else 'MISSED'})")


if __name__ == "__main__":
    main()
