"""The pretraining loop: warmup + cosine AdamW, accumulation, clipping, eval, checkpoints, exact resume.

    python -m pretrain.train --config run.yaml [key=value ...]
    torchrun --nproc_per_node 4 -m pretrain.train --config run.yaml parallel.engine=fsdp parallel.tp=2

The same code runs on one CPU process, on 2 gloo processes in CI, and on many GPU nodes: the
engine (`pretrain.engines`) holds the parallelism, the loop only sees its small interface.
A step whose loss is non-finite or spikes (> spike_factor x rolling mean) on any rank is skipped
whole and counted; too many in a row stop the run with a clear message.

`train` reads top to bottom (set up, then per step: batches, forward/backward, update, log, eval,
checkpoint; then finish). Beside it: set-up and resume, the skip guard (crash handling), evaluation
and the end-of-run files. Throughput, MFU and the planner's predictions against what the run
measures live in `pretrain.metrics`.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from planner.core.errors import PlannerError, guarded, one_line_parser
from planner.core.io import atomic_write_json, read_input
from planner.core.schema import RunConfig, load_config
from pretrain.checkpoint import Checkpointer
from pretrain.data.shards import PackedBatches, TokenShards
from pretrain.data.tokenizer import MAX_TOKENIZER_BYTES, load_tokenizer
from pretrain.distributed import DistInfo, all_reduce_max, all_reduce_mean, init_distributed
from pretrain.engines import Engine, build_engine
from pretrain.metrics import RunReport
from pretrain.objective import Objective
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


@dataclass
class Progress:
    """Where the run is: what a checkpoint's meta.json carries beside the engine's and the loader's states."""

    step: int = 0
    tokens_seen: int = 0
    skipped_total: int = 0
    run_id: str | None = None  # the MLflow run to keep logging into
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss), skipped steps left out
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss)
    aux_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, MoE load-balancing loss)
    resumed: bool = False

    def meta(self, run_id: str | None) -> dict:
        return {"tokens_seen": self.tokens_seen, "skipped_total": self.skipped_total, "mlflow_run_id": run_id,
                "history": self.history, "evals": self.evals, "aux_losses": self.aux_losses}


def train(cfg: RunConfig) -> dict:
    """Run (or resume) the job; returns a summary (rank 0's view)."""
    info, data, objective, engine, ckpt = set_up(cfg)
    progress = resume(cfg, ckpt, engine, data)
    tracker = Tracker(cfg, info.is_main, progress.run_id)
    report = RunReport(cfg, info)  # throughput, MFU, predicted vs measured memory
    if info.is_main and not progress.resumed:
        log_run_start(tracker, cfg, report, info.world)
    guard, faults = SkipGuard(cfg, info), InjectedFaults.from_env()
    engine.train(True)
    try:
        while progress.step < cfg.train.steps:
            step = progress.step = progress.step + 1
            start = time.perf_counter()
            engine.set_lr(lr_at(step, cfg))
            batches = [objective.apply(data.next(), step, micro) for micro in range(cfg.parallel.grad_accum)]
            counter = report.activation_counter(engine.model) if step == 1 else None
            losses, skip = engine.forward_backward(batches, guard.bad_on_any_rank, counter)  # skip: agreed by all ranks
            report.record_activations(counter)
            grad_norm = engine.step(skip=skip)
            progress.tokens_seen += report.tokens_per_step
            elapsed = time.perf_counter() - start
            progress.skipped_total += int(skip)
            step_loss = guard.settle(step, skip, losses)  # None when skipped; raises after too many in a row
            if step_loss is not None:
                progress.history.append((step, step_loss))
            metrics = {"loss": step_loss, "lr": lr_at(step, cfg), "grad_norm": grad_norm,
                       "skipped_steps": progress.skipped_total,
                       **report.step_metrics(step, progress.tokens_seen, elapsed, engine.measured_state_bytes)}
            if engine.aux_losses and not skip:  # an MoE model: its routers' balancing loss (inside `loss`, x coef)
                metrics["aux_loss"] = all_reduce_mean(sum(engine.aux_losses) / len(engine.aux_losses), info)
                progress.aux_losses.append((step, metrics["aux_loss"]))
            if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                metrics.update(eval_metrics(engine, cfg, info, objective, step, progress.evals))
            if step % cfg.train.log_every == 0 or step == 1 or LOG_ALWAYS & metrics.keys():
                tracker.log_metrics(metrics, step)
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                ckpt.save(step, engine, data.state_dict(), progress.meta(tracker.run_id))
            faults.after_step(step)
    except TrainingStopped:
        tracker.finish("FAILED")
        raise
    reported = report.summary(engine.measured_state_bytes,  # collective under PP: every stage's figures
                              engine.measured_expert_state_bytes)
    if reported.get("stages"):
        tracker.log_metrics(report.stage_metrics(reported["stages"]), progress.step)
    return finish(cfg, info, tracker, progress, reported)


#: metrics logged on their step whatever train.log_every says (they come once, or once per evaluation)
LOG_ALWAYS = frozenset({"eval_loss", "model_state_bytes_measured"})


# ---- set-up and resume --------------------------------------------------------------------------
def set_up(cfg: RunConfig) -> tuple[DistInfo, PackedBatches, Objective, Engine, Checkpointer]:
    """The process group, this rank's slice of the training data (checked against the model), the objective
    applied to it, the engine and the checkpointer. `cfg.parallel` becomes the layout as launched, checked once
    more."""
    info = init_distributed(cfg.parallel.engine, cfg.engine.backend, cfg.engine.timeout_s)
    cfg.parallel = plan = cfg.parallel.with_world(info.world)
    data = PackedBatches(TokenShards.open(cfg.data.train), plan.micro_batch, plan.dp_rank(info.rank), plan.dp,
                         seed=cfg.data.seed)
    objective = Objective.for_run(cfg, data.shards, plan.dp_rank(info.rank))  # before the model: its start id
    check_data(cfg, data.shards, objective)
    engine = build_engine(cfg, info)
    ckpt = Checkpointer(Path(cfg.out_dir) / cfg.train.checkpoint_dir, info, cfg.train.keep_last_checkpoints)
    return info, data, objective, engine, ckpt


def check_data(cfg: RunConfig, shards: TokenShards, objective: Objective | None = None) -> None:
    """The training (and evaluation) shards must fit the model: its sequence length (span corruption: rows of the
    raw length whose corrupted inputs are model.seq_len long), its vocabulary (every token id below model.vocab:
    the manifest's vocab_size and max_token_id, typed and checked by `TokenShards.open`), its tokenizer."""
    row = objective.expected_row_tokens(cfg.model.seq_len) if objective is not None else cfg.model.seq_len + 1
    if shards.seq_len + 1 != row:
        if row != cfg.model.seq_len + 1:
            raise PlannerError(f"data.train: span corruption of model.seq_len {cfg.model.seq_len} inputs reads rows of "
                               f"{row} raw tokens; the shards hold {shards.seq_len + 1} (pack them with seq_len "
                               f"{row - 1})")
        raise PlannerError(f"data.train: shards hold sequences of {shards.seq_len} tokens, "
                           f"model.seq_len is {cfg.model.seq_len}")
    check_vocab("data.train", shards, cfg.model.vocab)
    if cfg.data.eval:
        held_out = TokenShards.open(cfg.data.eval)
        check_vocab("data.eval", held_out, cfg.model.vocab)
        if row != cfg.model.seq_len + 1 and held_out.seq_len + 1 != row:
            raise PlannerError(f"data.eval: span corruption reads rows of {row} raw tokens; the shards hold "
                               f"{held_out.seq_len + 1}")
        if held_out.seq_len > row - 1:
            raise PlannerError(f"data.eval: shards hold sequences of {held_out.seq_len} tokens, longer than "
                               f"model.seq_len {cfg.model.seq_len}")
    check_tokenizer(cfg, shards.manifest)


def check_vocab(key: str, shards: TokenShards, vocab: int) -> None:
    """Refuse shards whose vocabulary (or largest token id) the model has no embedding for."""
    where = f"{key}: {shards.path / 'manifest.json'}"
    if shards.vocab_size > vocab:
        raise PlannerError(f"{where}: vocab_size {shards.vocab_size} > model.vocab {vocab}")
    top = shards.typed.max_token_id
    if top is not None and top >= vocab:  # (open already holds it below vocab_size)
        raise PlannerError(f"{where}: max_token_id {top} >= model.vocab {vocab}")


def check_tokenizer(cfg: RunConfig, train_manifest: dict) -> None:
    """Training and evaluation must use the same tokenizer: the one whose hash the shards carry."""
    want = train_manifest.get("tokenizer_sha256")
    if cfg.data.eval:
        got = TokenShards.open(cfg.data.eval).manifest.get("tokenizer_sha256")
        if want != got:
            raise PlannerError(f"data.eval: its shards were made with another tokenizer ({got}) than data.train's ({want})")
    if cfg.data.tokenizer:
        path = Path(cfg.data.tokenizer)
        if not path.is_file():
            raise PlannerError(f"data.tokenizer: {path} is not a file")
        if want and hashlib.sha256(read_input(path, MAX_TOKENIZER_BYTES)).hexdigest() != want:
            raise PlannerError(f"data.tokenizer: {path} is not the tokenizer the training shards were made with")
        if not want:  # shards without the hash (synthetic ones): the file must at least be a tokenizer
            load_tokenizer(path)


def resume(cfg: RunConfig, ckpt: Checkpointer, engine: Engine, data: PackedBatches) -> Progress:
    """Restore the latest checkpoint into the engine and the loader (when train.resume and there is one)."""
    latest = ckpt.latest() if cfg.train.resume else None
    if latest is None:
        return Progress()
    meta, loader_state = ckpt.load(latest, engine, max_step=cfg.train.steps)  # typed: CheckpointMeta
    data.load_state_dict(loader_state)
    return Progress(meta.step, meta.tokens_seen, meta.skipped_total, meta.run_id, list(meta.history),
                    list(meta.evals), list(meta.aux_losses), resumed=True)


def log_run_start(tracker: Tracker, cfg: RunConfig, report: RunReport, world: int) -> None:
    """Once per run (not again on resume): the plan with the predicted model states, and the fit's params."""
    tracker.log_dict({**cfg.plan, "predicted_model_state_bytes_per_rank": report.predicted.model_state_bytes},
                     "plan.json")
    tracker.log_params(report.run_params(world))


# ---- crash handling -----------------------------------------------------------------------------
class SkipGuard:
    """Skips a step whose loss is non-finite or spikes (> spike_factor x the rolling mean of recent steps) on
    any rank, and stops the run after more than train.max_skipped_steps skipped in a row."""

    def __init__(self, cfg: RunConfig, info: DistInfo):
        self.info, self.factor, self.max_skipped = info, cfg.train.spike_factor, cfg.train.max_skipped_steps
        self.window: deque[float] = deque(maxlen=cfg.train.spike_window)
        self.consecutive = 0

    def bad_on_any_rank(self, value: float) -> bool:
        """Collective: whether any rank's micro-batch loss is non-finite or spiking."""
        full = len(self.window) == self.window.maxlen
        spiking = self.factor > 0 and full and value > self.factor * (sum(self.window) / len(self.window))
        return all_reduce_max(0.0 if math.isfinite(value) and not spiking else 1.0, self.info) > 0

    def settle(self, step: int, skipped: bool, losses: list[float]) -> float | None:
        """The step's loss averaged over ranks (collective), None for a skipped step; raises TrainingStopped
        when too many steps in a row were skipped."""
        if skipped:
            self.consecutive += 1
            if self.consecutive > self.max_skipped:
                raise TrainingStopped(f"stopped at step {step}: {self.consecutive} consecutive steps skipped for "
                                      f"non-finite or spiking loss (train.max_skipped_steps = {self.max_skipped})")
            return None
        self.consecutive = 0
        loss = all_reduce_mean(sum(losses) / len(losses), self.info)
        self.window.append(loss)
        return loss


@dataclass(frozen=True)
class InjectedFaults:
    """Tests' hooks, from the environment: a slow step (so an outage can happen mid-run), and an abrupt
    exit after a given step (a crash: no clean-up, no final checkpoint)."""

    step_delay_s: float = 0.0
    fail_after_step: int = 0

    @classmethod
    def from_env(cls) -> InjectedFaults:
        return cls(float(os.environ.get(STEP_DELAY_ENV, "0")), int(os.environ.get(FAIL_AFTER_STEP_ENV, "0")))

    def after_step(self, step: int) -> None:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        if self.fail_after_step and step == self.fail_after_step:
            sys.stdout.flush()
            os._exit(17)


# ---- evaluation and the end of the run ----------------------------------------------------------
def evaluate(engine: Engine, cfg: RunConfig, info: DistInfo, objective: Objective | None = None) -> float | None:
    """Mean loss over train.eval_batches held-out micro-batches per rank, averaged over ranks (collective): the
    objective's loss, the held-out rows masked alike at every evaluation (their own stream, step 0)."""
    if not cfg.data.eval:
        return None
    plan = cfg.parallel
    batches = PackedBatches(TokenShards.open(cfg.data.eval), plan.micro_batch, plan.dp_rank(info.rank), plan.dp,
                            seed=cfg.data.seed)
    engine.train(False)
    objective = objective or Objective("clm", cfg.train.seed, 0)
    losses = engine.eval_losses([objective.apply(batches.next(), 0, i, "eval") for i in range(eval_batch_count(cfg))])
    engine.train(True)
    return all_reduce_mean(sum(losses) / len(losses), info)


def eval_batch_count(cfg: RunConfig) -> int:
    """train.eval_batches, rounded up to whole pipeline steps (a schedule runs m micro-batches at once)."""
    m = cfg.parallel.grad_accum if cfg.parallel.pp > 1 else 1
    return -(-cfg.train.eval_batches // m) * m


def eval_metrics(engine: Engine, cfg: RunConfig, info: DistInfo, objective: Objective, step: int,
                 evals: list[tuple[int, float]]) -> dict[str, float]:
    """Evaluate, record the point in `evals`, and return its metrics (none without eval data)."""
    eval_loss = evaluate(engine, cfg, info, objective)
    if eval_loss is None:
        return {}
    evals.append((step, eval_loss))
    metrics = {"eval_loss": eval_loss}
    if cfg.plan.get("loss_predicted"):  # a ladder's held-out run: the law's prediction, made before it ran
        metrics["loss_predicted"] = float(cfg.plan["loss_predicted"])
    return metrics


def finish(cfg: RunConfig, info: DistInfo, tracker: Tracker, progress: Progress, reported: dict) -> dict:
    """The run's summary; rank 0 writes summary.json and the loss curve and logs both. Closes the tracker."""
    history, evals = progress.history, progress.evals
    summary = {"steps": progress.step, "tokens_seen": progress.tokens_seen, "skipped_steps": progress.skipped_total,
               "final_loss": history[-1][1] if history else None, "eval_loss": evals[-1][1] if evals else None,
               "losses": history, "mlflow_run_id": tracker.run_id, **reported}
    if progress.aux_losses:
        summary["aux_losses"] = progress.aux_losses
    if info.is_main:
        out_dir = Path(cfg.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "summary.json", summary)
        plot = plot_losses(history, evals, out_dir / "loss_curve.png")
        if plot:
            tracker.log_artifact(plot)
        tracker.log_artifact(out_dir / "summary.json")
    tracker.finish()
    return summary


def plot_losses(history: list[tuple[int, float]], evals: list[tuple[int, float]], path: Path) -> Path | None:
    if not history:
        return None
    from matplotlib.figure import Figure  # no pyplot: a third less start-up, and no global figure state

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    ax.plot(*zip(*history, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set(xlabel="step", ylabel="loss", title="Loss curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


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
    parser = one_line_parser("pretrain", "Pretrain a decoder (clm), an encoder (mlm) or an encoder-decoder "
                                         "(span corruption).")
    parser.add_argument("--config", help="run YAML (e.g. from `planner emit`)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=20")
    args = parser.parse_args(argv)
    return guarded("pretrain", lambda: train(load_config(args.config, args.overrides)) and None)


if __name__ == "__main__":
    sys.exit(main())
