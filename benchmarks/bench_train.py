"""Trainer overhead: tokens/s of `pretrain.train` against a bare PyTorch loop, same model and batch.

One process on CPU, fp32 (this machine's EPYC has no bf16 instructions: bf16 autocast matmuls
run ~30x slower than fp32 here, which would swamp any loop overhead), AdamW, the same shards. The bare loop is the
minimum a training step needs (batch, forward, backward, clip, step); ours adds the loader's
bookkeeping, NaN/spike checks, LR schedule, metrics and MLflow logging (SQLite, every 10 steps).
Target: overhead under 10%.

    .venv/bin/python benchmarks/bench_train.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from planner.core.schema import load_config
from pretrain.data.shards import PackedBatches, TokenShards
from pretrain.data.synthetic import write_markov_shards
from pretrain.model import Transformer
from pretrain.train import train

STEPS, WARMUP = 60, 10
MODEL = ["model.layers=4", "model.hidden=256", "model.heads=4", "model.vocab=512", "model.seq_len=256"]


def bare_loop(cfg, data_dir: Path) -> float:
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, foreach=False)
    batches = PackedBatches(TokenShards.open(data_dir), cfg.parallel.micro_batch)
    for i in range(STEPS):
        if i == WARMUP:
            start = time.perf_counter()
        x, y = batches.next()
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (STEPS - WARMUP) * cfg.parallel.micro_batch * cfg.model.seq_len / (time.perf_counter() - start)


def our_loop(tmp: Path, data_dir: Path) -> float:
    cfg = load_config(None, [f"data.train={data_dir}", f"out_dir={tmp / 'run'}", f"train.steps={STEPS}",
                             "parallel.micro_batch=8", "train.log_every=10", "train.checkpoint_every=100000",
                             "train.precision=fp32",
                             f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db", *MODEL])
    train(cfg)
    from mlflow.tracking import MlflowClient

    # wall-clock between the logged steps WARMUP and STEPS (MLflow's own timestamps): everything the
    # loop does between them counts, logging included
    run_id = json.loads((tmp / "run/mlflow_run.json").read_text())["run_id"]
    stamps = {m.step: m.timestamp for m in MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_metric_history(run_id, "loss")}
    seconds = (stamps[STEPS] - stamps[WARMUP]) / 1000
    return (STEPS - WARMUP) * cfg.parallel.micro_batch * cfg.model.seq_len / seconds


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_markov_shards(tmp / "data", vocab=512, seq_len=256, rows=1024)
        cfg = load_config(None, [f"data.train={tmp / 'data'}", "parallel.micro_batch=8", "train.precision=fp32", *MODEL])
        bare = bare_loop(cfg, tmp / "data")
        ours = our_loop(tmp, tmp / "data")
    overhead = 1 - ours / bare
    print(f"bare PyTorch loop  {bare:9,.0f} tokens/s")
    print(f"pretrain.train     {ours:9,.0f} tokens/s  (overhead {overhead:+.1%}; target < 10%: "
          f"{'OK' if overhead < 0.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
