"""The pretraining loop: warmup + cosine AdamW, accumulation, clipping, eval, checkpoints, exact resume.

    python -m pretrain.train --config run.yaml [key=value ...]
    torchrun --nproc_per_node 4 -m pretrain.train --config run.yaml parallel.engine=fsdp parallel.tp=2

The same code runs on one CPU process, on 2 gloo processes in CI, and on many GPU nodes: the
engine (`pretrain.engines`) holds the parallelism, the loop only sees its small interface.
A step whose loss is non-finite or spikes (> spike_factor x rolling mean) on any rank is skipped
whole and counted; too many in a row stop the run with a clear message.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections import deque
from pathlib import Path

import torch

from planner import compute
from planner.errors import PlannerError, guarded, one_line_parser
from planner.io import atomic_write_json
from pretrain.checkpoint import Checkpointer
from pretrain.config import RunConfig, load_config, to_shape
from pretrain.data.shards import PackedBatches, TokenShards
from pretrain.distributed import DistInfo, all_reduce_max, all_reduce_mean, init_distributed
from pretrain.engines import build_engine
from pretrain.memory_probe import SavedTensorCounter
from pretrain.tracking import Tracker

FAIL_AFTER_STEP_ENV = "PRETRAIN_FAIL_AFTER_STEP"  # tests: die abruptly after this step (simulated crash)
STEP_DELAY_ENV = "PRETRAIN_STEP_DELAY_S"  # tests: a slow step, so an outage can happen mid-run


class TrainingStopped(PlannerError):
    """The run stopped on purpose (too many skipped steps); the message says why."""


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warmup to optim.lr, then cosine decay to lr x min_lr_ratio at the last step."""
    o, total = cfg.optim, cfg.train.steps
    if o.warmup_steps and step <= o.warmup_steps:
        return o.lr * step / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def predicted_model_state_bytes(cfg: RunConfig) -> dict[str, float]:
    """The planner's model-state bytes per rank alive at the optimizer step, GPU and offloaded CPU share
    together (the trainer counts live tensors wherever they are; gathered buffers excluded)."""
    from planner import memory

    plan = cfg.parallel
    strategy = memory.Strategy.of(plan)
    # torch autocast keeps fp32 weights, fp32 gradients and fp32 Adam states: the fp32 layout
    convention = {"deepspeed": "deepspeed", "fsdp": "fsdp"}.get(plan.engine, "zero-paper")
    shape = to_shape(cfg.model)
    precision = "fp32" if plan.engine in ("single", "ddp") or cfg.train.precision == "fp32" else "bf16-mixed"
    terms = memory.state_terms(precision, "adamw", convention, shape)
    states = memory.model_states(shape.params_per_tp_rank(plan.tp), terms, strategy, shape, convention, at_step=True)
    return {k: states.gpu[k] + states.cpu[k] for k in states.gpu}


def predicted_activation_bytes(cfg: RunConfig) -> float:
    """The planner's saved-for-backward bytes of one micro-batch (layers and output layer) for this run's
    engine, precision and checkpointing: what `SavedTensorCounter` measures on the first forward."""
    from planner import activations

    plan = cfg.parallel
    engine = {"single": "ddp", "ddp": "ddp"}.get(plan.engine, plan.engine)
    regime = activations.regime_for(cfg.train.precision, engine)
    shape, b = to_shape(cfg.model), plan.micro_batch
    checkpointing = "full" if cfg.train.activation_checkpointing else "none"
    return activations.stored_bytes(shape, b, regime=regime, checkpointing=checkpointing, tp=plan.tp,
                                    sequence_parallel=plan.tp > 1) + activations.head_bytes(shape, b, regime, plan.tp)


def predicted_peak_bytes(cfg: RunConfig, world: int) -> float | None:
    """The planner's per-rank peak of tensors (no CUDA runtime, no fragmentation), for GPU runs."""
    from planner.emit import request_from_config
    from planner.plan import estimate
    from planner.verify import predicted_lines

    try:
        return predicted_lines(estimate(request_from_config(cfg, world)))["allocated"]
    except PlannerError:
        return None


def peak_flops_per_device(cfg: RunConfig, device: torch.device) -> float | None:
    """Dense bf16 peak of the device this run is on: the catalog entry matching the GPU's name, else the
    plan's figure for a GPU. None on a CPU: the catalog has no CPU peak, so MFU and the plan's predicted
    tokens/s (both against a GPU's peak) are not reported there."""
    if device.type != "cuda":
        return None
    from planner.hardware import BUILTIN_GPUS

    name = torch.cuda.get_device_name(device).lower()
    for key, gpu in BUILTIN_GPUS.items():
        if key.split("-")[0] in name:
            return gpu.peak_flops("bf16" if "bf16" in gpu.peak_tflops else "fp16")
    return float(cfg.plan["peak_flops_per_gpu"]) if cfg.plan.get("peak_flops_per_gpu") else None


def memory_in_use(info: DistInfo) -> float:
    if info.device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(info.device))
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # peak RSS on Linux


def evaluate(engine, cfg: RunConfig, info: DistInfo) -> float | None:
    if not cfg.data.eval:
        return None
    plan = cfg.parallel
    batches = PackedBatches(TokenShards.open(cfg.data.eval), plan.micro_batch, plan.dp_rank(info.rank), plan.dp,
                            seed=cfg.data.seed)
    engine.train(False)
    with torch.no_grad():
        losses = [float(engine.forward(*batches.next())) for _ in range(cfg.train.eval_batches)]
    engine.train(True)
    return all_reduce_mean(sum(losses) / len(losses), info)


def plot_losses(history: list[tuple[int, float]], evals: list[tuple[int, float]], path: Path) -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*history, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set(xlabel="step", ylabel="loss", title="Loss curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def check_tokenizer(cfg: RunConfig, train_manifest: dict) -> None:
    """Training and evaluation must use the same tokenizer: the one whose hash the shards carry."""
    import hashlib

    want = train_manifest.get("tokenizer_sha256")
    if cfg.data.eval:
        got = TokenShards.open(cfg.data.eval).manifest.get("tokenizer_sha256")
        if want != got:
            raise PlannerError(f"data.eval: its shards were made with another tokenizer ({got}) than data.train's ({want})")
    if cfg.data.tokenizer and want:
        path = Path(cfg.data.tokenizer)
        if not path.is_file():
            raise PlannerError(f"data.tokenizer: {path} does not exist")
        if hashlib.sha256(path.read_bytes()).hexdigest() != want:
            raise PlannerError(f"data.tokenizer: {path} is not the tokenizer the training shards were made with")


def train(cfg: RunConfig) -> dict:
    """Run (or resume) the job; returns a summary (rank 0's view)."""
    info = init_distributed(cfg.parallel.engine, cfg.engine.backend, cfg.engine.timeout_s)
    cfg.parallel = plan = cfg.parallel.with_world(info.world)  # the layout as launched, checked once more
    out_dir = Path(cfg.out_dir)
    data = PackedBatches(TokenShards.open(cfg.data.train), plan.micro_batch, plan.dp_rank(info.rank), plan.dp,
                         seed=cfg.data.seed)
    if data.shards.seq_len != cfg.model.seq_len:
        raise PlannerError(f"data.train: shards hold sequences of {data.shards.seq_len} tokens, "
                           f"model.seq_len is {cfg.model.seq_len}")
    if data.shards.manifest["vocab_size"] > cfg.model.vocab:
        raise PlannerError(f"model.vocab: {cfg.model.vocab} is smaller than the data's vocabulary "
                           f"{data.shards.manifest['vocab_size']}")
    check_tokenizer(cfg, data.shards.manifest)
    engine = build_engine(cfg, info)
    ckpt = Checkpointer(out_dir / cfg.train.checkpoint_dir, info, cfg.train.keep_last_checkpoints)
    step, tokens_seen, skipped_total, run_id = 0, 0, 0, None
    history: list[tuple[int, float]] = []
    evals: list[tuple[int, float]] = []
    latest = ckpt.latest() if cfg.train.resume else None
    if latest is not None:
        meta, loader_state = ckpt.load(latest, engine)
        data.load_state_dict(loader_state)
        step, tokens_seen, skipped_total = meta["step"], meta["tokens_seen"], meta["skipped_total"]
        run_id, history, evals = meta.get("mlflow_run_id"), [tuple(h) for h in meta["history"]], \
            [tuple(e) for e in meta["evals"]]
    tracker = Tracker(cfg, info.is_main, run_id)
    shape = to_shape(cfg.model)
    flops_per_token = compute.model_flops_per_token(shape.param_count(), shape)  # PaLM's 6N + 12LHQT
    peak = peak_flops_per_device(cfg, info.device)
    predicted = predicted_model_state_bytes(cfg)
    tokens_per_step = plan.batch * cfg.model.seq_len
    if info.is_main and latest is None:
        tracker.log_dict({**cfg.plan, "predicted_model_state_bytes_per_rank": predicted}, "plan.json")
        # what `planner fit nd mlflow:EXPERIMENT --n-col params.n_params --d-col params.train_tokens` reads
        tracker.log_params({"n_params": shape.param_count(), "train_tokens": tokens_per_step * cfg.train.steps,
                            "world_size": info.world, "tp": plan.tp, "data_parallel": plan.dp})
    window: deque[float] = deque(maxlen=cfg.train.spike_window)
    summary_extra: dict[str, float] = {}
    activation_metrics: dict[str, float] = {}
    consecutive_skips, fail_after = 0, int(os.environ.get(FAIL_AFTER_STEP_ENV, "0"))
    step_delay = float(os.environ.get(STEP_DELAY_ENV, "0"))
    engine.train(True)
    while step < cfg.train.steps:
        step += 1
        start = time.perf_counter()
        engine.set_lr(lr_at(step, cfg))
        losses, poison = [], False
        for micro in range(plan.grad_accum):
            counter = SavedTensorCounter(engine.model) if step == 1 and micro == 0 else None
            with counter.count() if counter else contextlib.nullcontext():
                loss = engine.forward(*data.next())
            if counter is not None:
                predicted_act = predicted_activation_bytes(cfg)
                activation_metrics = {"activation_bytes_measured": counter.bytes,
                                      "activation_bytes_predicted": predicted_act,
                                      "activation_bytes_ratio": predicted_act / max(counter.bytes, 1)}
            value = float(loss.detach())
            spiking = cfg.train.spike_factor > 0 and len(window) == window.maxlen and \
                value > cfg.train.spike_factor * (sum(window) / len(window))
            poison = poison or all_reduce_max(0.0 if math.isfinite(value) and not spiking else 1.0, info) > 0
            engine.backward(loss, poison=poison)
            losses.append(value)
        grad_norm = engine.step(skip=poison)
        tokens_seen += tokens_per_step
        elapsed = time.perf_counter() - start
        if poison:
            skipped_total, consecutive_skips = skipped_total + 1, consecutive_skips + 1
            if consecutive_skips > cfg.train.max_skipped_steps:
                tracker.finish("FAILED")
                raise TrainingStopped(f"stopped at step {step}: {consecutive_skips} consecutive steps skipped for "
                                      f"non-finite or spiking loss (train.max_skipped_steps = {cfg.train.max_skipped_steps})")
        else:
            consecutive_skips = 0
        step_loss = all_reduce_mean(sum(losses) / len(losses), info) if not poison else float("nan")
        if not poison:
            window.append(step_loss)
            history.append((step, step_loss))
        tokens_per_s = tokens_per_step / elapsed
        metrics = {"loss": step_loss if not poison else None, "lr": lr_at(step, cfg), "grad_norm": grad_norm,
                   "tokens_seen": tokens_seen, "flops_seen": tokens_seen * flops_per_token,
                   "tokens_per_s": tokens_per_s, "skipped_steps": skipped_total,
                   "memory_bytes": memory_in_use(info),
                   "mfu": compute.mfu(tokens_per_s, flops_per_token, peak, info.world) if peak else None}
        if engine.measured_state_bytes is not None and "measured_model_state_bytes" not in cfg.plan:
            measured = sum(engine.measured_state_bytes.values())
            cfg.plan["measured_model_state_bytes"] = measured
            metrics.update({"model_state_bytes_measured": measured, "model_state_bytes_predicted": sum(predicted.values()),
                            "model_state_bytes_ratio": measured / sum(predicted.values())})
            if cfg.plan.get("tokens_per_s") and peak:
                metrics["tokens_per_s_predicted"] = float(cfg.plan["tokens_per_s"])
        if step == 1:  # measured vs predicted memory, once per run
            summary_extra.update(activation_metrics)
            metrics.update(activation_metrics)
        if step == 1 and info.device.type == "cuda":
            peak_predicted = predicted_peak_bytes(cfg, info.world)
            metrics["peak_bytes_measured"] = float(torch.cuda.max_memory_allocated(info.device))
            metrics["peak_reserved_bytes_measured"] = float(torch.cuda.max_memory_reserved(info.device))
            if peak_predicted:
                metrics["peak_bytes_predicted"] = peak_predicted
                metrics["peak_bytes_ratio"] = peak_predicted / metrics["peak_bytes_measured"]
            summary_extra.update({k: v for k, v in metrics.items() if k.startswith("peak_")})
        if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
            eval_loss = evaluate(engine, cfg, info)
            if eval_loss is not None:
                evals.append((step, eval_loss))
                metrics["eval_loss"] = eval_loss
                if cfg.plan.get("loss_predicted"):  # a ladder's held-out run: the law's prediction, made before it ran
                    metrics["loss_predicted"] = float(cfg.plan["loss_predicted"])
        once = {"eval_loss", "model_state_bytes_measured"} & metrics.keys()  # never skipped by log_every
        if step % cfg.train.log_every == 0 or once or step == 1:
            tracker.log_metrics(metrics, step)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            ckpt.save(step, engine, data.state_dict(), {
                "tokens_seen": tokens_seen, "skipped_total": skipped_total, "mlflow_run_id": tracker.run_id,
                "history": history, "evals": evals})
        if step_delay:
            time.sleep(step_delay)
        if fail_after and step == fail_after:
            sys.stdout.flush()
            os._exit(17)  # simulated crash: no clean-up, no final checkpoint
    summary = {"steps": step, "tokens_seen": tokens_seen, "skipped_steps": skipped_total,
               "final_loss": history[-1][1] if history else None, "eval_loss": evals[-1][1] if evals else None,
               "losses": history, "mlflow_run_id": tracker.run_id,
               "model_state_bytes_measured": engine.measured_state_bytes,
               "model_state_bytes_predicted": predicted, **summary_extra}
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "summary.json", summary)
        plot = plot_losses(history, evals, out_dir / "loss_curve.png")
        if plot:
            tracker.log_artifact(plot)
        tracker.log_artifact(out_dir / "summary.json")
    tracker.finish()
    return summary


def sync_mlflow_main(argv: list[str]) -> int:
    """`pretrain sync-mlflow OUT_DIR [--tracking-uri URI]`: deliver a run's undelivered MLflow records."""
    from pretrain.tracking import sync

    parser = one_line_parser("pretrain sync-mlflow", "Replay a run's MLflow outbox into a tracking store.")
    parser.add_argument("out_dir", help="the run's out_dir (holds mlflow-offline/outbox.jsonl)")
    parser.add_argument("--tracking-uri", help="store to send to (default: the run's own)")
    args = parser.parse_args(argv)

    def run() -> None:
        run_id, sent = sync(args.out_dir, args.tracking_uri)
        print(f"sync-mlflow: {sent} record(s) delivered to run {run_id}")

    return guarded("pretrain", run)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sync-mlflow"]:
        return sync_mlflow_main(argv[1:])
    parser = one_line_parser("pretrain", "Pretrain a decoder-only model.")
    parser.add_argument("--config", help="run YAML (e.g. from `planner emit`)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=20")
    args = parser.parse_args(argv)
    return guarded("pretrain", lambda: train(load_config(args.config, args.overrides)) and None)


if __name__ == "__main__":
    sys.exit(main())
