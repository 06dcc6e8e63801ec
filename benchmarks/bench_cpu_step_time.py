"""This machine's step time, predicted by the step-time model from `planner probe`'s figures and measured by the
trainer (issue 24: the CPU is hardware too).

`planner probe` measures this machine (matmul FLOP/s, SDPA's rate, copy bandwidth, gloo's all-reduce, all-gather and
reduce-scatter between two processes) as a catalog entry (`device: cpu`), again before each layout (the shared VM
drifts); `planner emit` plans each layout on it, writing the predicted step time into run.yaml; `launch local` trains it (one thread per process, as launch sets), and the run logs `step_time_s` every
step and `step_time_s_predicted` beside it in MLflow. Reported: the median measured step (steps 3 onward: the
first steps build caches and the optimizer states) against the prediction, for one process and for 2-process
DDP, FSDP and ZeRO-2, fp32 (this CPU has no bf16 matmul instructions: the probe measures bf16 GEMMs ~100x
slower than fp32, and the model would price them so).

`--pipeline` runs two pipeline stages on two processes instead (GPipe, 1F1B, interleaved 1F1B; 4 micro-batches a
step): the bubble and the stages' send / receive as the model prices them. `--arch encoder` runs our BERT (MLM)
the same way; `--arch encoder-decoder` our T5 (span corruption, `planner.compute.encoder_decoder_step_time`):
`--layers` blocks per stack, `--seq-len` input positions (the shards hold span corruption's raw rows for them).

    .venv/bin/python benchmarks/bench_cpu_step_time.py [--layers 4 --hidden 512 --seq-len 256 --micro-batch 8]
    .venv/bin/python benchmarks/bench_cpu_step_time.py --arch encoder-decoder
    .venv/bin/python benchmarks/bench_cpu_step_time.py --pipeline
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from planner.model.shapes import span_corruption_raw_length

#: (name, processes, emit's flags, data-parallel ranks, micro-batches per step)
CASES = [("1 process", 1, [], 1, 1), ("DDP, 2 processes", 2, [], 2, 1),
         ("FSDP full, 2 processes", 2, ["--fsdp", "full"], 2, 1), ("ZeRO-2, 2 processes", 2, ["--zero", "2"], 2, 1)]
#: `--pipeline`: two stages on two processes (FSDP2 inside each, as torchtitan), 4 micro-batches a step
PIPELINE = ["--fsdp", "full", "--pp", "2", "--microbatches", "4"]
PIPELINE_CASES = [("PP 2 GPipe", 2, [*PIPELINE, "--pp-schedule", "gpipe"], 1, 4),
                  ("PP 2 1F1B", 2, [*PIPELINE, "--pp-schedule", "1f1b"], 1, 4),
                  ("PP 2 interleaved 1F1B, 2 stages a rank", 2,
                   [*PIPELINE, "--pp-schedule", "interleaved-1f1b", "--pp-virtual", "2"], 1, 4)]


def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ...: exit {out.returncode}\n{out.stderr[-3000:]}")
    return out.stdout


def measured(db: Path) -> tuple[float, float]:
    """(median measured step from step 3, the logged prediction) of the store's one run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    steps = [m.value for m in client.get_metric_history(run.info.run_id, "step_time_s") if m.step >= 3]
    predicted = client.get_metric_history(run.info.run_id, "step_time_s_predicted")
    return statistics.median(steps), predicted[0].value if predicted else float("nan")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="4")
    ap.add_argument("--hidden", default="512")
    ap.add_argument("--heads", default="8")
    ap.add_argument("--vocab", default="4096")
    ap.add_argument("--seq-len", default="256")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--arch", default="decoder", choices=["decoder", "encoder", "encoder-decoder"])
    ap.add_argument("--pipeline", action="store_true", help="the pipeline schedules instead of the engines")
    a = ap.parse_args(argv)
    py = sys.executable
    # span corruption reads raw rows of its own length for seq_len inputs (one more token: the shift CLM needs)
    t5 = a.arch == "encoder-decoder"
    row = span_corruption_raw_length(int(a.seq_len)) - 1 if t5 else int(a.seq_len)
    arch = {"decoder": [], "encoder": ["--arch", "encoder", "--mlp", "gelu"],  # BERT's block
            "encoder-decoder": ["--arch", a.arch, "--mlp", "relu"]}[a.arch]  # T5 v1.0's MLP
    # MLM and span corruption without a tokenizer take their pad, mask and sentinel ids past the shards' vocabulary
    data_vocab = a.vocab if a.arch == "decoder" else str(int(a.vocab) - 128)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalog = root / "this-cpu.yaml"
        sh(py, "-m", "pretrain.data.synthetic", str(root / "shards"), "--vocab", data_vocab, "--rows", "2048",
           "--seq-len", str(row), cwd=root)
        probed = []
        print("| layout | measured s (median, steps 3+) | predicted s | predicted / measured |")
        print("|---|---|---|---|")
        for name, n, flags, dp, micro_batches in PIPELINE_CASES if a.pipeline else CASES:
            job = root / name.split(",")[0].replace(" ", "-")
            tokens = a.micro_batch * dp * micro_batches * int(a.seq_len)
            # probed again before each layout: this shared VM's rates drift by 20-40% over minutes
            sh(py, "-m", "planner.cli", "probe", "--out", str(catalog), cwd=root)
            probed.append(catalog.read_text())
            sh(py, "-m", "planner.cli", "emit", "--out", str(job), "--gpu-catalog", str(catalog), "--gpu", "this-cpu",
               "--gpus", str(n), "--gpus-per-node", "2", "--precision", "fp32", *arch, "--layers", a.layers,
               "--hidden", a.hidden, "--heads", a.heads, "--vocab", a.vocab, "--seq-len", a.seq_len,
               "--micro-batch", str(a.micro_batch), "--batch-tokens", str(tokens), "--tokens", str(tokens * a.steps),
               "--data", str(root / "shards"), "--tracking-uri", f"sqlite:///{job}/mlflow.db",
               "--checkpoint-every", "1000", "--eval-every", "1000", *flags, cwd=root)
            sh(py, "-m", "launch.cli", "local", str(job / "run.yaml"), "--nproc", str(n), cwd=job)
            got, want = measured(job / "mlflow.db")
            print(f"| {name} | {got:.3f} | {want:.3f} | {want / got:.3f} |", flush=True)
    print("\nThe probes, one before each layout:\n" + "\n".join(probed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
