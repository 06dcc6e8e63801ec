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
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from planner import checks, parallel, slurm
from planner.errors import PlannerError
from planner.io import atomic_write_text
from planner.parallel import ParallelPlan
from planner.plan import EstimateRequest, estimate, resolve_model

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

    def validate(self) -> EmitOptions:
        """Every value that reaches a script or run.yaml, checked once (planner.checks)."""
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


def parallel_section(req: EstimateRequest, opts: EmitOptions, seq_len: int) -> ParallelPlan:
    """The plan's layout, whole: engine, mesh, nodes and the batch rule solved for --batch-tokens."""
    if opts.batch_tokens % seq_len:
        raise PlannerError(f"--batch-tokens: {opts.batch_tokens:,} is not a multiple of the sequence length {seq_len}")
    nodes = opts.nodes or max(1, math.ceil(req.gpus / req.gpus_per_node))
    plan = replace(req.parallel, nodes=nodes)
    if plan.offload != "none" and plan.engine == "fsdp":
        plan = replace(plan, offload="all")  # FSDP2 offloads parameters, gradients and states together
    per_pass = plan.micro_batch * plan.dp * seq_len  # the flag is in tokens, the plan's batch in sequences
    if opts.batch_tokens % per_pass:
        raise PlannerError(
            f"--batch-tokens: {opts.batch_tokens:,} is not a multiple of micro-batch {plan.micro_batch} x seq-len "
            f"{seq_len} x {plan.dp} data-parallel ranks = {per_pass:,} tokens; try "
            f"{max(1, round(opts.batch_tokens / per_pass)) * per_pass:,}")
    return plan.with_global_batch(opts.batch_tokens // seq_len, parallel.cli_flag).check_runnable(parallel.cli_flag)


def build_run_config(req: EstimateRequest, opts: EmitOptions, result: dict) -> dict:
    model = resolve_model(req)
    s = model.shape
    if s.mlp != "swiglu" or s.norm != "rmsnorm" or s.bias or s.position != "rope":
        raise PlannerError(f"--model: the trainer builds LLaMA-style blocks (SwiGLU, RMSNorm, RoPE, no bias); "
                           f"{model.source} is {s.mlp}/{s.norm}/{s.position}: give a shape or --params instead")
    layout = parallel_section(req, opts, s.seq_len)
    steps = max(1, math.ceil(result["compute"]["tokens"] / opts.batch_tokens))
    warmup = opts.warmup_steps if opts.warmup_steps is not None else max(1, steps // 100)
    return {
        "name": opts.name,
        "out_dir": f"runs/{opts.name}",
        "model": {"layers": s.layers, "hidden": s.hidden, "heads": s.heads, "kv_heads": s.kv_heads,
                  "ffn_hidden": s.ffn, "vocab": s.vocab, "seq_len": s.seq_len, "tied_embeddings": s.tied_embeddings},
        "data": {"train": opts.data_train, "eval": opts.data_eval, "tokenizer": opts.tokenizer},
        "optim": {"lr": opts.lr, "warmup_steps": warmup},
        "train": {"steps": steps,
                  "precision": "fp32" if req.precision == "fp32" else "bf16-mixed",
                  "checkpoint_every": opts.checkpoint_every, "eval_every": opts.eval_every,
                  "activation_checkpointing": req.checkpointing != "none"},
        "parallel": layout.to_dict(),
        "engine": {"ds_config": "ds_config.json"} if layout.engine == "deepspeed" else {},
        "tracking": {"tracking_uri": opts.tracking_uri, "experiment": opts.experiment, "run_name": opts.name},
        "plan": plan_summary(req, result),
    }


def plan_summary(req: EstimateRequest, result: dict) -> dict:
    """What the run logs next to its measurements, and what `launch` needs to re-check the plan."""
    c = result["compute"]
    return {
        "request": _request_dict(req),
        "params": result["params"],
        "predicted_memory_per_gpu_bytes": result["memory_per_gpu_bytes"]["total"],
        "predicted_memory_lines_bytes": result["memory_per_gpu_bytes"],
        "fits": result["fits"],
        "gpu": result["hardware"]["gpu"],
        "gpu_memory_bytes": result["gpu_memory_bytes"],
        "peak_flops_per_gpu": c["peak_flops_per_gpu"],
        "mfu": c["mfu"],
        "tokens": c["tokens"],
        "flops": c["flops"],
        "tokens_per_s": c["tokens_per_second"],
        "gpu_hours": c["gpu_hours"],
    }


def _request_dict(req: EstimateRequest) -> dict:
    keep = ("params", "model", "seq_len", "gpu", "gpus", "gpus_per_node", "precision", "optimizer", "zero", "fsdp",
            "sharding_factor", "offload", "micro_batch", "checkpointing", "tp", "tokens", "mfu", "price")
    out = {k: getattr(req, k) for k in keep}
    if req.shape is not None:
        out["shape"] = req.shape.to_dict()
    return out


def request_from_plan(plan: dict, gpus: int | None = None, gpus_per_node: int | None = None) -> EstimateRequest:
    """Rebuild the request a run config was emitted from (for `launch`'s preflight at the real size)."""
    from planner.shapes import ModelShape

    r = dict(plan["request"])
    shape = r.pop("shape", None)
    req = EstimateRequest(**r, shape=ModelShape(**{k: v for k, v in shape.items()}) if shape else None)
    return replace(req, gpus=gpus or req.gpus, gpus_per_node=gpus_per_node or req.gpus_per_node)


def request_from_config(cfg, gpus: int | None = None) -> EstimateRequest:
    """The job a loaded RunConfig's model, train and engine sections describe (on `gpus`, default 8)."""
    from pretrain.config import to_shape  # torch-free: typed config only

    p = cfg.parallel
    kw = {"zero": p.zero_stage} if p.engine == "deepspeed" else {}
    if p.engine == "fsdp":
        kw = {"fsdp": p.fsdp_mode, "sharding_factor": p.dp_shard}
    return EstimateRequest(shape=to_shape(cfg.model), micro_batch=p.micro_batch, tp=p.tp,
                           precision=cfg.train.precision, offload=p.offload,
                           checkpointing="full" if cfg.train.activation_checkpointing else "none",
                           gpus=gpus or p.world or 8, **kw)


def request_from_run_config(path: str) -> EstimateRequest:
    """The request behind a run config: its embedded plan when `planner emit` wrote it, else the job its
    model, train and engine sections describe (8 GPUs of the default kind)."""
    from pretrain.config import load_config

    cfg = load_config(path)
    return request_from_plan(cfg.plan) if cfg.plan.get("request") else request_from_config(cfg)


def _q(value) -> str:
    return shlex.quote(str(value))


def launch_scripts(layout: ParallelPlan, opts: EmitOptions, plan_hours: float | None = None) -> dict[str, str]:
    """Only the launchers that fit the engine and the world size: torchrun (one node, or every node with
    c10d rendezvous) for torch engines, the deepspeed launcher (+ hostfile across nodes) for DeepSpeed,
    and always the SLURM batch script with its submit chain (planner.slurm)."""
    nodes, per_node, deepspeed = layout.nodes, layout.world // layout.nodes, layout.engine == "deepspeed"
    train = "-m pretrain.train --config run.yaml"
    head = "#!/usr/bin/env bash\n# Emitted by `planner emit`; every value is validated and shell-quoted.\n" \
           'set -euo pipefail\ncd "$(dirname "$0")"\n'
    port = f"\"${{MASTER_PORT:-{FREE_PORT_SH}}}\""
    scripts: dict[str, str] = {}
    if deepspeed and nodes > 1:
        scripts["hostfile"] = "".join(f"node{i} slots={per_node}\n" for i in range(nodes))
        scripts["launch_deepspeed.sh"] = head + (
            "# Edit `hostfile` (one `host slots=N` line per node); the launcher reaches nodes over ssh.\n"
            f"exec deepspeed --hostfile hostfile --num_nodes {_q(nodes)} --num_gpus {_q(per_node)} "
            f"--master_port {port} --module pretrain.train --config run.yaml\n")
    elif deepspeed:
        scripts["launch_deepspeed.sh"] = head + (
            f"exec deepspeed --num_gpus {_q(per_node)} --master_port {port} --module pretrain.train --config run.yaml\n")
    elif nodes > 1:
        scripts["launch_torchrun_multinode.sh"] = head + (
            "# Run on every node with NODE_RANK set (0 .. nodes-1), MASTER_ADDR = node 0's address and\n"
            "# MASTER_PORT = a port free on node 0 (the same on every node).\n"
            ": \"${MASTER_ADDR:?set MASTER_ADDR to node 0}\" \"${NODE_RANK:?set NODE_RANK}\" "
            "\"${MASTER_PORT:?set MASTER_PORT to a free port on node 0}\"\n"
            f"exec torchrun --nnodes={_q(nodes)} --nproc_per_node={_q(per_node)} --node_rank=\"$NODE_RANK\" "
            f"--rdzv_backend=c10d --rdzv_endpoint=\"$MASTER_ADDR:$MASTER_PORT\" --rdzv_id={_q(opts.name)} "
            f"--max_restarts={_q(opts.max_restarts)} {train}\n")
    else:
        scripts["launch_torchrun.sh"] = head + f"exec torchrun --standalone --nproc_per_node={_q(per_node)} {train}\n"
    time, jobs = slurm.job_layout(plan_hours, opts.max_time, opts.slurm_time)
    job_dir = Path(opts.out_dir)
    scripts["slurm.sbatch"] = slurm.sbatch_script(
        job_dir=job_dir, name=opts.name, nodes=nodes, per_node=per_node, time=time, partition=opts.slurm_partition,
        env_setup=opts.env_setup or slurm.default_env_setup(), max_restarts=opts.max_restarts)
    scripts["submit.sh"] = slurm.submit_script(job_dir, jobs)
    return scripts


def plan_markdown(result: dict, run: dict) -> str:
    m, c, gib = result["memory_per_gpu_bytes"], result["compute"], 2**30
    t, p = run["train"], run["parallel"]
    lines = [
        f"# Plan: {run['name']}",
        "",
        f"- Model: {result['params']:,.0f} parameters; {run['model']['layers']} layers x {run['model']['hidden']} hidden, "
        f"{run['model']['heads']} heads, seq {run['model']['seq_len']}, vocab {run['model']['vocab']}",
        f"- Hardware: {result['hardware']['gpus']} x {result['hardware']['description']}",
        f"- Strategy: {result['training']['strategy']} ({p['engine']}), tensor parallel {p['tp']}, "
        f"{result['training']['precision']}",
        f"- Batch: micro-batch {p['micro_batch']} x accumulation {p['grad_accum']} x "
        f"{result['training']['data_parallel']} data-parallel ranks = {p['global_batch']} sequences x "
        f"{run['model']['seq_len']} tokens; {t['steps']:,} steps",
        "",
        "| memory per GPU | GiB |",
        "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v / gib:,.2f} |" for k, v in m.items()],
        "",
        f"Fits on {result['hardware']['gpu']}: {'yes' if result['fits'] else 'NO'} "
        f"(largest micro-batch that fits: {result['max_micro_batch']}).",
        "",
        f"- Tokens: {c['tokens']:,.0f}; model FLOPs {c['flops']:.3e} (6ND {c['flops_6nd']:.3e}); {c['pf_days']:,.1f} PF/s-days",
        f"- At MFU {c['mfu']:.0%}: {c['gpu_hours']:,.0f} GPU-hours, {c['wall_days']:,.2f} days, ${c['cost_usd']:,.0f}; "
        f"{c['tokens_per_second']:,.0f} tokens/s expected",
        "",
        "Launch: `launch local run.yaml --nproc N`, `launch nodes ...`, or the scripts here "
        "(the launcher that fits the engine and size: `launch_torchrun.sh`, `launch_torchrun_multinode.sh` or "
        "`launch_deepspeed.sh` (+ `hostfile`); and `slurm.sbatch` with `submit.sh`).",
        "",
    ]
    return "\n".join(lines)


def emit(req: EstimateRequest, opts: EmitOptions) -> dict[str, Path]:
    """Write every file; returns name -> path. Refuses a plan that does not fit (the user sees why)."""
    opts.validate()
    result = estimate(req)
    run = build_run_config(req, opts, result)
    files: dict[str, str] = {"run.yaml": _yaml(run), "plan.json": json.dumps(result, indent=2, sort_keys=True) + "\n",
                             "PLAN.md": plan_markdown(result, run)}
    layout = ParallelPlan(**run["parallel"])
    if layout.engine == "deepspeed":
        cfg = parallel.deepspeed_config(layout, bf16=req.precision != "fp32", grad_clip=1.0)
        files["ds_config.json"] = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    files.update(launch_scripts(layout, opts, result["wall_days"] * 24))
    out = Path(opts.out_dir)
    written = {}
    for name, text in files.items():
        written[name] = atomic_write_text(out / name, text)
        if name.endswith((".sh", ".sbatch")):
            written[name].chmod(0o755)
    return written


def _yaml(obj: dict) -> str:
    import yaml

    return "# Emitted by `planner emit`: the run config `pretrain.train` reads.\n" + \
        yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
