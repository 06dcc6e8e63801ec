"""`planner emit`: a plan becomes the files a launcher needs, byte-identical for identical inputs.

Written into one folder: `run.yaml` (the run config `pretrain` reads, with the plan's predictions
embedded), `ds_config.json` (DeepSpeed) or the FSDP settings inside run.yaml, launch scripts
(torchrun single node and multi-node c10d rendezvous, the deepspeed launcher with a hostfile, a
SLURM sbatch script; every value shell-quoted), `plan.json` and a readable `PLAN.md`.
Pure Python: no torch; DeepSpeed's own config class checks `ds_config.json` in the tests.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from planner.core import checks
from planner.core.errors import PlannerError
from planner.core.io import atomic_write_text, refuse_special_target
from planner.core.parallel import ParallelPlan, cli_flag
from planner.core.schema import (
    OBJECTIVES,
    DataConfig,
    EngineConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
    dump_config,
)
from planner.emit import slurm
from planner.emit.command import ShellExpr, deepspeed_command, render, torchrun_command
from planner.emit.deepspeed import deepspeed_config
from planner.memory.pipeline import bubble_fraction
from planner.plan.estimate import estimate
from planner.plan.request import EstimateRequest, ResolvedModel, planning_of, resolve_model
from planner.plan.result import Estimate
from planner.plan.trainable import check_arch_trainable, check_moe_trainable

DEFAULT_BATCH_TOKENS = 2**22  # ~4M tokens per optimizer step, as LLaMA (Touvron et al. 2023)
#: Emitted scripts take the rendezvous port from MASTER_PORT; where none is set they pick one that is
#: free (local launcher) or derive it from the Slurm job id (distinct for concurrent jobs), never a
#: fixed port that a second job on the same node would collide with.
FREE_PORT_SH = ("$(python3 -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); "
                "print(s.getsockname()[1])')")


@dataclass(frozen=True)
class EmitOptions:
    out_dir: str
    name: str = "run"
    data_train: str = "data/shards/train"
    data_eval: str | None = None
    tokenizer: str | None = None
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    global_batch: int | None = None  # sequences per step; when set, it is the batch (--batch-tokens is not)
    microbatches: int | None = None  # --microbatches as given: the batch must give exactly that many
    lr: float = 3e-4
    warmup_steps: int | None = None  # None: 1% of the steps, at least 1
    checkpoint_every: int = 1000
    eval_every: int = 1000
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "pretrain"
    nodes: int | None = None  # None: gpus / gpus_per_node
    slurm_partition: str | None = None
    slurm_time: str | None = None  # None: the plan's wall-clock with a margin, capped by max_time
    max_time: str = "48:00:00"  # the partition's limit: longer plans become a chain of jobs
    env_setup: str | None = None  # None: activate the virtual environment emit runs from
    max_restarts: int = 3
    force: bool = False  # replace the files of another job in out_dir

    def validate(self) -> EmitOptions:
        """Every value that reaches a script or run.yaml, checked once (planner.core.checks)."""
        checks.no_control("--out", self.out_dir)
        checks.name("--name", self.name)
        for flag, value in (("--data", self.data_train), ("--eval-data", self.data_eval),
                            ("--tokenizer", self.tokenizer), ("--tracking-uri", self.tracking_uri),
                            ("--experiment", self.experiment)):
            if value is not None:
                checks.no_control(flag, value)
        checks.integer("--batch-tokens", self.batch_tokens, 1)
        checks.number("--lr", self.lr, 0.0, checks.MAX_LR, lo_open=True)
        checks.integer("--checkpoint-every", self.checkpoint_every, 1)
        checks.integer("--eval-every", self.eval_every, 1)
        if self.warmup_steps is not None:
            checks.integer("--warmup-steps", self.warmup_steps, 0)
        if self.nodes is not None:
            checks.integer("--nodes", self.nodes, 1)
        if self.slurm_partition is not None:
            checks.partition("--partition", self.slurm_partition)
        if self.slurm_time is not None:
            checks.slurm_time("--time", self.slurm_time)
        checks.slurm_time("--max-time", self.max_time)
        if self.env_setup is not None:
            checks.no_control("--env-setup", self.env_setup)
        checks.integer("--max-restarts", self.max_restarts, 0, 1000)
        return self


def global_batch_flag(key: str) -> str:
    """`with_global_batch`'s messages, naming --global-batch instead of --batch-tokens."""
    return "--global-batch" if key == "global_batch" else cli_flag(key)


def parallel_section(req: EstimateRequest, opts: EmitOptions, seq_len: int) -> ParallelPlan:
    """The plan's layout, whole: engine, mesh, nodes and the batch rule solved for --batch-tokens (or
    --global-batch, in sequences)."""
    plan = _solve_batch(req, opts, seq_len)
    if opts.microbatches is not None and plan.grad_accum != opts.microbatches:
        given = "--global-batch" if opts.global_batch is not None else "--batch-tokens"
        raise PlannerError(f"--microbatches: {opts.microbatches}, but {given} gives {plan.grad_accum} micro-batches "
                           f"of {plan.micro_batch} on {plan.dp} data-parallel ranks; give the batch one way")
    return plan


def _solve_batch(req: EstimateRequest, opts: EmitOptions, seq_len: int) -> ParallelPlan:
    """The batch rule solved for --global-batch (sequences) or --batch-tokens."""
    nodes = opts.nodes or max(1, math.ceil(req.gpus / req.gpus_per_node))
    if opts.global_batch is not None:
        return replace(req.layout, nodes=nodes).with_global_batch(opts.global_batch, global_batch_flag) \
            .check_runnable(cli_flag)
    if opts.batch_tokens % seq_len:
        raise PlannerError(f"--batch-tokens: {opts.batch_tokens:,} is not a multiple of the sequence length {seq_len}")
    plan = replace(req.layout, nodes=nodes)
    per_pass = plan.micro_batch * plan.dp * seq_len  # the flag is in tokens, the plan's batch in sequences
    if opts.batch_tokens % per_pass:
        raise PlannerError(
            f"--batch-tokens: {opts.batch_tokens:,} is not a multiple of micro-batch {plan.micro_batch} x seq-len "
            f"{seq_len} x {plan.dp} data-parallel ranks = {per_pass:,} tokens; try "
            f"{max(1, round(opts.batch_tokens / per_pass)) * per_pass:,}")
    return plan.with_global_batch(opts.batch_tokens // seq_len, cli_flag).check_runnable(cli_flag)


#: What the trainer runs, of what the planner can estimate; emit refuses the rest in one line.
TRAINED_PRECISIONS = ("bf16-mixed", "fp32")


def check_trainable(req: EstimateRequest, model: ResolvedModel) -> None:
    """A plan emit writes is one the trainer can train: refuse what it cannot, naming the flag."""
    check_arch_trainable(model)
    check_moe_trainable(model, req.layout)
    s = model.shape
    if s.arch != "decoder" and req.checkpointing != "none":
        raise PlannerError(f"--checkpointing {req.checkpointing}: the trainer runs an {s.arch} without recomputation; "
                           "use none")
    for flag, degree in (("--tp", req.layout.tp), ("--pp", req.layout.pp)):
        if degree > 1 and s.tied_embeddings:  # the run schema's rule (`validate`), named before a file is written
            raise PlannerError(f"{flag}: {degree}: {model.source} ties its head to its embedding, which tensor and "
                               "pipeline parallelism here keep apart; give an untied shape or config")
    if s.arch == "decoder" and (s.mlp != "swiglu" or s.norm != "rmsnorm" or s.bias or s.position != "rope"
                                or s.embedding_norm or s.head_dim_override is not None):
        raise PlannerError(f"--model: the trainer builds LLaMA-style blocks (SwiGLU, RMSNorm, RoPE, no bias); "
                           f"{model.source} is {s.mlp}/{s.norm}/{s.position}: give a shape or --params instead")
    if req.precision == "fp8":
        raise PlannerError("--precision fp8: planned (memory and step time), but the trainer does not run Float8 "
                           "yet (it needs torchao and an H100-class GPU); emit bf16-mixed")
    if req.precision not in TRAINED_PRECISIONS:
        raise PlannerError(f"--precision: the trainer runs {' or '.join(TRAINED_PRECISIONS)}, not {req.precision}")
    if req.optimizer not in ("adamw", "adam"):
        raise PlannerError(f"--optimizer: the trainer steps with AdamW, not {req.optimizer}")
    if req.checkpointing == "selective":
        raise PlannerError("--checkpointing: the trainer recomputes whole blocks or runs the op policy; "
                           "use full, op or none, not selective")
    if req.finetune not in (None, "full"):
        raise PlannerError(f"--finetune {req.finetune}: the trainer does not train adapters yet; "
                           "estimate it, or emit --finetune full")


def model_section(s) -> ModelConfig:
    """run.yaml's `model:` for a shape the trainer builds (`planner.model.shapes.shape_of` reads it back)."""
    m = s.moe
    moe = {} if m is None else {"experts": m.experts, "top_k": m.top_k, "expert_ffn": m.expert_ffn,
                                "shared_experts": m.shared_experts, "shared_ffn": m.shared_ffn,
                                "dense_layers": m.dense_layers}
    if s.arch == "encoder":
        moe = {"arch": s.arch, "mlp": s.mlp, "max_positions": s.max_positions, "token_types": s.token_types}
    if s.arch == "encoder-decoder":
        moe = {"arch": s.arch, "mlp": s.mlp, "decoder_layers": s.n_decoder_layers, "relative_buckets": s.relative_buckets,
               "head_dim": s.head_dim_override if s.head_dim_override != s.hidden // s.heads else None}
    return ModelConfig(layers=s.layers, hidden=s.hidden, heads=s.heads, kv_heads=s.kv_heads, ffn_hidden=s.ffn,
                       vocab=s.vocab, seq_len=s.seq_len, tied_embeddings=s.tied_embeddings, **moe)


def build_run_config(req: EstimateRequest, opts: EmitOptions, result: Estimate) -> RunConfig:
    """The run schema for this plan: the model, the layout, the schedule and every planning assumption."""
    model = resolve_model(req)
    check_trainable(req, model)
    s = model.shape
    layout = req.layout  # solved for the batch by `parallel_section` (emit)
    steps = max(1, math.ceil(result.compute.tokens / (layout.batch * s.seq_len)))
    warmup = opts.warmup_steps if opts.warmup_steps is not None else max(1, steps // 100)
    return RunConfig(
        name=opts.name,
        out_dir=f"runs/{opts.name}",
        model=model_section(s),
        data=DataConfig(train=opts.data_train, eval=opts.data_eval, tokenizer=opts.tokenizer),
        optim=OptimConfig(lr=opts.lr, warmup_steps=warmup),
        train=TrainConfig(steps=steps, precision=req.precision, checkpoint_every=opts.checkpoint_every,
                          objective=None if s.arch == "decoder" else OBJECTIVES[s.arch],
                          eval_every=opts.eval_every, activation_checkpointing=req.checkpointing,
                          activation_checkpointing_every=req.checkpointing_every),
        parallel=layout,
        engine=EngineConfig(ds_config="ds_config.json" if layout.engine == "deepspeed" else None),
        tracking=TrackingConfig(tracking_uri=opts.tracking_uri, experiment=opts.experiment, run_name=opts.name),
        planning=planning_of(req, model),
        plan=plan_summary(result),
    )


def plan_summary(result: Estimate) -> dict:
    """The predictions the run logs next to its measurements (run.yaml's `plan:`)."""
    c = result.compute
    return {
        "params": result.params,
        "peak_moment": result.memory.peak_moment,
        "predicted_memory_per_gpu_bytes": result.memory.total,
        "predicted_memory_lines_bytes": result.memory.lines,
        "fits": result.fit.fits,
        "gpu": result.hardware.gpu,
        "gpu_memory_bytes": result.fit.gpu_memory_bytes,
        "peak_flops_per_gpu": c.peak_flops_per_gpu,
        "mfu": c.mfu,
        "tokens": c.tokens,
        "flops": c.flops,
        "tokens_per_s": c.tokens_per_second,
        "gpu_hours": c.gpu_hours,
        "mfu_source": result.mfu_source,
        **({"step_time_s": result.time["step_time_s"]} if result.time else {}),
    }


def launch_scripts(layout: ParallelPlan, opts: EmitOptions, plan_hours: float | None = None) -> dict[str, str]:
    """Only the launchers that fit the engine and the world size: torchrun (one node, or every node with
    c10d rendezvous) for torch engines, the deepspeed launcher (+ hostfile across nodes) for DeepSpeed,
    and always the SLURM batch script with its submit chain (planner.emit.slurm)."""
    nodes, per_node, deepspeed = layout.nodes, layout.world // layout.nodes, layout.engine == "deepspeed"
    head = "#!/usr/bin/env bash\n# Emitted by `planner emit`; every value is validated and shell-quoted.\n" \
           'set -euo pipefail\ncd "$(dirname "$0")"\n'
    port = ShellExpr(f"\"${{MASTER_PORT:-{FREE_PORT_SH}}}\"")
    scripts: dict[str, str] = {}
    if deepspeed and nodes > 1:
        scripts["hostfile"] = "".join(f"node{i} slots={per_node}\n" for i in range(nodes))
        scripts["launch_deepspeed.sh"] = head + (
            "# Edit `hostfile` (one `host slots=N` line per node); the launcher reaches nodes over ssh.\n"
            f"exec {render(deepspeed_command('deepspeed', 'run.yaml', nproc=per_node, master_port=port, nnodes=nodes, hostfile='hostfile'))}\n")
    elif deepspeed:
        scripts["launch_deepspeed.sh"] = head + (
            f"exec {render(deepspeed_command('deepspeed', 'run.yaml', nproc=per_node, master_port=port))}\n")
    elif nodes > 1:
        cmd = torchrun_command(["torchrun"], "run.yaml", nproc=per_node, nnodes=nodes, node_rank=ShellExpr('"$NODE_RANK"'),
                               rdzv_endpoint=ShellExpr('"$MASTER_ADDR:$MASTER_PORT"'), rdzv_id=opts.name,
                               max_restarts=opts.max_restarts)
        scripts["launch_torchrun_multinode.sh"] = head + (
            "# Run on every node with NODE_RANK set (0 .. nodes-1), MASTER_ADDR = node 0's address and\n"
            "# MASTER_PORT = a port free on node 0 (the same on every node).\n"
            ": \"${MASTER_ADDR:?set MASTER_ADDR to node 0}\" \"${NODE_RANK:?set NODE_RANK}\" "
            "\"${MASTER_PORT:?set MASTER_PORT to a free port on node 0}\"\n"
            f"exec {render(cmd)}\n")
    else:
        scripts["launch_torchrun.sh"] = head + f"exec {render(torchrun_command(['torchrun'], 'run.yaml', nproc=per_node))}\n"
    time, jobs = slurm.job_layout(plan_hours, opts.max_time, opts.slurm_time)
    job_dir = Path(opts.out_dir)
    scripts["slurm.sbatch"] = slurm.sbatch_script(
        job_dir=job_dir, name=opts.name, nodes=nodes, per_node=per_node, time=time, partition=opts.slurm_partition,
        env_setup=opts.env_setup or slurm.default_env_setup(), max_restarts=opts.max_restarts)
    scripts["submit.sh"] = slurm.submit_script(job_dir, jobs)
    return scripts


def plan_markdown(result: Estimate, run: RunConfig) -> str:
    c, gib, m, p = result.compute, 2**30, run.model, run.parallel
    moments = result.memory.moments
    names = list(moments)
    table = [f"| memory per GPU (GiB) | {' | '.join(n + (' (peak)' if n == result.memory.peak_moment else '') for n in names)} |",
             "|---|" + "---|" * len(names)]
    for line in moments[result.memory.peak_moment]:
        table.append(f"| {line.replace('_', ' ')} | " + " | ".join(f"{moments[n].get(line, 0.0) / gib:,.2f}" for n in names)
                     + " |")
    lines = [
        f"# Plan: {run.name}",
        "",
        f"- Model: {result.params:,.0f} parameters; {m.layers} layers x {m.hidden} hidden, "
        f"{m.heads} heads, seq {m.seq_len}, vocab {m.vocab}",
        f"- Hardware: {result.hardware.gpus} x {result.hardware.description or result.hardware.gpu}",
        f"- Strategy: {result.training.strategy} ({p.engine}), tensor parallel {p.tp}, {result.training.precision}"
        + (f"; pipeline {p.pp} ({p.pp_schedule}, {p.pp_virtual} stage(s) per rank, {p.grad_accum} micro-batches, "
           f"bubble {bubble_fraction(p):.1%})" if p.pp > 1 else ""),
        f"- Batch: micro-batch {p.micro_batch} x accumulation {p.grad_accum} x "
        f"{p.dp} data-parallel ranks = {p.global_batch} sequences x {m.seq_len} tokens; {run.train.steps:,} steps",
        "",
        *table,
        "",
        f"Fits on {result.hardware.gpu}: {'yes' if result.fit.fits else 'NO'} "
        f"(peak at {result.memory.peak_moment}; largest micro-batch that fits: {result.fit.max_micro_batch}).",
        "",
        f"- Tokens: {c.tokens:,.0f}; model FLOPs {c.flops:.3e} (6ND {c.flops_6nd:.3e}); {c.pf_days:,.1f} PF/s-days",
        f"- At MFU {c.mfu:.0%}: {c.gpu_hours:,.0f} GPU-hours, {c.wall_days:,.2f} days, ${c.cost_usd:,.0f}; "
        f"{c.tokens_per_second:,.0f} tokens/s expected",
        "",
        "Launch: `launch local run.yaml --nproc N`, `launch nodes ...`, or the scripts here "
        "(the launcher that fits the engine and size: `launch_torchrun.sh`, `launch_torchrun_multinode.sh` or "
        "`launch_deepspeed.sh` (+ `hostfile`); and `slurm.sbatch` with `submit.sh`).",
        "",
    ]
    return "\n".join(lines)


def emit(req: EstimateRequest, opts: EmitOptions) -> dict[str, Path]:
    """Write every file; returns name -> path. A plan that does not fit is written (PLAN.md and plan.json say so,
    and `launch`'s preflight refuses it unless --force): the job may be meant for a larger GPU than planned."""
    opts.validate()
    model = resolve_model(req)
    check_arch_trainable(model)  # before the estimate and the layout's checks: the reason named first
    check_moe_trainable(model, req.layout)
    # the estimate of the layout as emitted (its micro-batches per step set by the batch): its step time
    # and MFU, and so its days and dollars, are the run's
    req = replace(req, layout=parallel_section(req, opts, model.shape.seq_len))
    result = estimate(req)
    run = build_run_config(req, opts, result)
    files: dict[str, str] = {
        "run.yaml": dump_config(run, header="Emitted by `planner emit`: the run config `pretrain.train` reads."),
        "plan.json": json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n",
        "PLAN.md": plan_markdown(result, run)}
    if run.parallel.engine == "deepspeed":
        cfg = deepspeed_config(run.parallel, bf16=run.train.precision != "fp32", grad_clip=run.optim.grad_clip)
        files["ds_config.json"] = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    files.update(launch_scripts(run.parallel, opts, result.compute.wall_days * 24))
    return write_job_folder(Path(opts.out_dir), files, force=opts.force)


def write_job_folder(out: Path, files: dict[str, str], force: bool = False) -> dict[str, Path]:
    """All or nothing: every file is written into a folder beside `out` first, then each is renamed into
    place, so a failure leaves `out` as it was. A folder that holds another job's run.yaml is refused
    (one line) unless `force`, as is one that holds a file of ours without a run.yaml (somebody's own PLAN.md);
    the same job again rewrites its files."""
    run_yaml = out / "run.yaml"
    if not force and run_yaml.is_file() and run_yaml.read_text() != files["run.yaml"]:
        raise PlannerError(f"--out: {out} already holds another job's run.yaml; choose a new folder, or --force "
                           "to replace its files")
    theirs = [name for name in files if not run_yaml.is_file() and (out / name).exists()]
    if not force and theirs:
        raise PlannerError(f"--out: {out} already holds {theirs[0]}, not from an emitted job (no run.yaml); choose "
                           "a new folder, or --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".emit", dir=out.parent))
    try:
        for name, text in files.items():
            atomic_write_text(staging / name, text)
            if name.endswith((".sh", ".sbatch")):
                (staging / name).chmod(0o755)
        out.mkdir(exist_ok=True)
        for name in files:
            refuse_special_target(out / name)
        for name in files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {name: out / name for name in files}
