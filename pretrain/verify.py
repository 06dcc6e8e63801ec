"""`planner verify`: the real model and engine at the planned scale, dry-run on a CPU.

It builds `pretrain.model.Transformer` with the plan's shape, lays it out exactly as the trainer's
FSDP engine does (the plan's device mesh from `pretrain.engines.parallelize.build_mesh`, then
`parallelize`: tensor parallelism -> activation checkpointing -> FSDP2), and runs two real AdamW
steps under PyTorch's own memory trackers (`torch.distributed._tools`: `FSDPMemTracker` for FSDP2,
`MemTracker` for one process). Nothing is allocated: `FakeTensorMode` gives every tensor a size and
no data, and the `fake` process group answers every collective at once, so a LLaMA-7B plan at world
size 64 runs on a laptop CPU.

What it covers, and why not more:
- FSDP2 full, shard-grad-op and hybrid, with or without DTensor tensor parallelism (TP x FSDP on a
  2-D mesh, the loss on vocabulary shards): the engine's own `build_mesh` and `parallelize`. The
  model's parameters are fake from the start; the meshes and the layout are built outside the fake
  mode (inside it, `init_device_mesh` and FSDP2's own TP x FSDP mesh fail), then the model is
  materialised as fake tensors.
- Single process and DDP: each DDP rank holds what one process holds, under bf16 autocast, except that the
  trainer's DDP (`gradient_as_bucket_view=True`) keeps its buckets, which are the gradients, through
  `zero_grad(set_to_none=True)`: here the gradients are zeroed in place instead, so they stay as the buckets do.
- Gradient accumulation: each step runs two of the plan's micro-batches when it has more than one, so the
  second's forward and backward run over the gradients the first left (the engines reduce every micro-batch).
- DeepSpeed ZeRO is refused, with the reason measured on the spot (`deepspeed_fake_failure`):
  `deepspeed.initialize` moves the module with `module.to(...)`, and under FakeTensorMode
  `nn.Module._apply` cannot swap the parameters ("Couldn't swap Embedding.weight"), with or
  without bf16 and for stages 1-3 (checked on torch 2.13 / deepspeed 0.19).
- Pipeline parallelism: each pipeline rank's stages (`Transformer.stage`, the split the trainer cuts)
  laid out by the same `parallelize` over the plan's mesh (pp outermost), measured one pipeline rank
  at a time in torch's 1F1B order (`planner.memory.pipeline.warmup_chunks` warm-up forwards, then one
  forward and one backward at a time, then the cool-down), every backward but the last without FSDP's
  gradient reduction and resharding, as `PipelineStage` runs them, then the step.
  The stages' P2P exchange is not run (its receive buffers are an input tensor per forward here).
  One stage per rank: interleaved stages are one FSDP root each, and FSDPMemTracker follows one root.
- Mixture of experts, with expert parallelism composed with FSDP2 as the trainer lays it out. Fake tensors hold no
  values to route by, so each MoE layer is given the load the planner plans for (`route_at_the_planned_load`):
  this rank sends its k copies of each token evenly over the experts and, under EP, receives the busiest rank's
  load (`MoE.load_factor` x the mean) from every EP rank for each of its experts; the all-to-alls run on the fake
  process group. How real routing spreads (the trainer's own runs) is measured in `tests/test_moe_train.py`.
- Layouts the trainer does not run are refused by the rule the trainer applies
  (`ParallelPlan.check_runnable`: TP only with FSDP, no offload with TP, FSDP no-shard is DDP).

The tracker's snapshot at the peak splits memory by category; `LINES` maps each onto the planner's
lines. The per-category maxima over the step are reported too: the planner's lines are maxima
(weights gathered, all gradients, all activations), the tracker's peak is one moment.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan, cli_flag
from planner.core.schema import ModelConfig
from planner.memory.peak import ddp_buckets

#: planner line -> the tracker categories (FSDP2 tracker names, then MemTracker names) it matches.
LINES = {
    "weights": ("Unsharded Param", "All Gather", "Parameter"),
    "master_weights": ("Sharded Param",),
    "gradients": ("Sharded Grad", "Unsharded Grad", "Reduce Scatter", "Gradient"),
    "optimizer": ("OptState", "Optstate"),
    "activations": ("Activation", "Temp"),
    "overhead": ("Buffer", "Inputs", "Other"),
}
VERIFIED_FSDP_MODES = ("full", "shard-grad-op", "hybrid")


def _category_totals(snapshot: dict) -> dict[str, float]:
    out = dict.fromkeys(LINES, 0.0)
    for key, value in snapshot.items():
        name = getattr(key, "value", key)
        for line, names in LINES.items():
            if name in names:
                out[line] += value
    return out


@contextmanager
def sharding_propagation_untracked():
    """DTensor's sharding propagation off the tracker's books.

    To learn an op's output shape, DTensor runs the op once more on global-shape fake tensors, under the
    ambient fake mode when there is one (`_sharding_prop.detect_fake_mode`). Those are metadata, never memory
    on any device, and the trackers mean to skip them: they count only ops under the fake mode they were
    entered in. Under verify the ambient mode *is* that mode, so a vocabulary-parallel head's propagation
    (a 32,000 x 8,192 fp32 gradient for Llama-2-70B: 1,000 MiB) was counted as a temporary. Here the
    propagation gets a fake mode of its own, which the tracker then skips as torch intends."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.tensor import _sharding_prop

    own = FakeTensorMode()
    saved = _sharding_prop.detect_fake_mode
    _sharding_prop.detect_fake_mode = lambda *args: own
    try:
        yield
    finally:
        _sharding_prop.detect_fake_mode = saved


def _tracker_class(fsdp: bool):
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    base = FSDPMemTracker if fsdp else MemTracker

    class MaxTracker(base):  # also keeps each category's own maximum over the run
        def _update_peak_stats(self, peak_state) -> None:
            super()._update_peak_stats(peak_state)
            maxima = self.__dict__.setdefault("category_max", {})
            for snap in self._curr_mem_snap.values():
                for key, value in snap.items():
                    name = getattr(key, "value", key)
                    maxima[name] = max(maxima.get(name, 0), value)

    return MaxTracker


def model_config(shape, tp: int = 1) -> ModelConfig:
    """The trainer's model config for a planner shape (and the check that our model can be that shape)."""
    from planner.emit.run_files import model_section

    if shape.mlp != "swiglu" or shape.norm != "rmsnorm" or shape.position != "rope" or shape.bias:
        raise PlannerError("verify: builds our LLaMA-style model (SwiGLU, RMSNorm, RoPE, no bias); "
                           "this shape is another architecture")
    if shape.heads % tp or shape.n_kv_heads % tp:  # the trainer's rules for TP (planner.core.schema.validate)
        raise PlannerError(f"verify: --tp {tp} must divide the model's {shape.heads} heads and {shape.n_kv_heads} "
                           "kv heads (each rank holds whole heads)")
    if tp > 1 and shape.tied_embeddings:
        raise PlannerError("verify: the trainer does not split tied embeddings by tensor parallelism; use --tp 1")
    return model_section(shape)


def route_at_the_planned_load(model: nn.Module, shape, plan: ParallelPlan) -> None:
    """Give every MoE layer of `model` the planner's routing load (module docstring): fake tensors have none."""
    from pretrain.model import Experts, FixedLoad

    m = shape.moe
    if m is None:
        return
    copies = plan.micro_batch * shape.seq_len * m.top_k
    sent = [copies // m.experts + (e < copies % m.experts) for e in range(m.experts)]
    busiest = round(m.load_factor * copies / m.experts)  # from each EP rank, for each of this rank's experts
    load = FixedLoad(sent, [[busiest] * (m.experts // plan.ep) for _ in range(plan.ep)])
    for module in model.modules():
        if isinstance(module, Experts):
            module.fixed_load = load


def deepspeed_fake_failure(stage: int) -> str | None:
    """Try `deepspeed.initialize` on a tiny model under FakeTensorMode; the error it raises, or None."""
    import os

    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pretrain.model import Transformer

    saved = {k: os.environ.get(k) for k in ("DS_ACCELERATOR", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    os.environ.update(DS_ACCELERATOR=saved["DS_ACCELERATOR"] or "cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="2")
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no C++ build for a dry run
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    try:
        with FakeTensorMode():
            model = Transformer(ModelConfig(layers=1, hidden=64, heads=4, vocab=64, seq_len=16))
            deepspeed.initialize(model=model, config={
                "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
                "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}})
        return None
    except Exception as exc:  # the point: whatever DeepSpeed raises under fake tensors
        return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
    finally:
        if created:
            dist.destroy_process_group()
        for key, value in saved.items():  # leave the environment as it was (tests run in one process)
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def checked_layout(req) -> ParallelPlan:
    """The request's layout, if verify can run it as the trainer would; else a PlannerError saying why."""
    plan = req.layout
    if plan.engine == "deepspeed":
        reason = deepspeed_fake_failure(plan.zero_stage) or "it initialised, but its steps are not wired into verify yet"
        raise PlannerError(f"verify: DeepSpeed ZeRO cannot run under fake tensors: deepspeed.initialize raised "
                           f"{reason}; use --fsdp, or no sharding flag for DDP")
    if plan.engine == "fsdp" and plan.fsdp_mode not in VERIFIED_FSDP_MODES:
        raise PlannerError(f"verify: --fsdp {plan.fsdp_mode} is plain data parallelism; the trainer runs it as DDP "
                           "(no sharding flag)")
    if plan.offload != "none":
        raise PlannerError("verify: CPU offload moves states off the device the tracker measures; use --offload none")
    if req.checkpointing == "selective":
        raise PlannerError("verify: the trainer runs full or op activation checkpointing or none, not selective")
    if req.precision not in ("bf16-mixed", "fp32"):
        raise PlannerError(f"verify: the trainer runs bf16-mixed or fp32, not {req.precision}")
    if plan.pp > 1 and plan.pp_virtual > 1:
        raise PlannerError("verify: interleaved stages are one FSDP root each, and FSDPMemTracker follows one root "
                           "per rank; verify --pp-virtual 1 (the trainer runs both)")
    return plan.check_runnable(cli_flag)  # the trainer's own rule: TP only composed with FSDP


def build_model(cfg: ModelConfig, plan: ParallelPlan, req, fake_mode, part: dict | None = None,
                mesh=None) -> nn.Module:
    """The trainer's model under `fake_mode` (or, `part`, one pipeline stage: `Transformer`'s layers /
    embedding / head arguments), laid out by the FSDP engine's own functions when the plan is FSDP."""
    from pretrain.engines.parallelize import build_mesh, parallelize
    from pretrain.model import Transformer

    checkpointing = req.checkpointing if req.checkpointing in ("full", "op") else "none"  # what the trainer runs
    part = part or {}
    if plan.engine != "fsdp":
        with fake_mode:
            return Transformer(cfg, activation_checkpointing=checkpointing, checkpoint_every=req.checkpointing_every)
    # Device meshes cannot be built inside the fake mode (their rank tables are real tensors), and FSDP2
    # builds one of its own over TP's DTensors, so the layout is applied outside it: to parameters that
    # are fake already, so nothing is allocated.
    mesh = mesh or build_mesh(plan, "cpu")
    with fake_mode, torch.device("meta"):
        model = Transformer(cfg, **part)
    parallelize(model, plan, mesh, bf16=req.precision == "bf16-mixed", activation_checkpointing=checkpointing,
                checkpoint_every=req.checkpointing_every)
    with fake_mode:
        model.to_empty(device="cpu")
    return model


def measure(req, steps: int = 2, jobs: int = 1) -> dict:
    """Per-rank peak memory of the plan's job, by the planner's categories (bytes); a pipeline's ranks are
    measured in `jobs` processes."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from planner.plan.request import resolve_model
    from pretrain.engines.parallelize import loss_context

    plan = checked_layout(req)
    if plan.pp > 1:
        return measure_stages(req, plan, steps, jobs)
    shape = resolve_model(req).shape
    cfg = model_config(shape, plan.tp)
    world = plan.world
    start = time.perf_counter()
    fsdp = plan.engine == "fsdp"
    ddp = ddp_buckets(plan)
    created = False
    if fsdp and not dist.is_initialized():
        dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
        created = True
    try:
        fake_mode = FakeTensorMode()
        model = build_model(cfg, plan, req, fake_mode)
        route_at_the_planned_load(model, shape, plan)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if not fsdp and req.precision == "bf16-mixed" \
            else nullcontext()
        with fake_mode:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
            tracker = _tracker_class(fsdp)(model, optimizer) if fsdp else _tracker_class(False)()
            if not fsdp:
                tracker.track_external(model, optimizer)
            with tracker, sharding_propagation_untracked():
                for _step in range(steps):
                    for _ in range(min(plan.grad_accum, 2)):  # the second micro-batch runs over the first's gradients
                        tokens = torch.randint(0, cfg.vocab, (plan.micro_batch, cfg.seq_len))
                        with loss_context(plan):  # as the engine runs them: on vocabulary shards under TP
                            with autocast:
                                loss = model(tokens, tokens)
                            loss.backward()
                        tracker.reset_mod_stats()  # the trackers follow one forward per module; the peak stays
                    optimizer.step()
                    # DDP's buckets hold the gradients through zero_grad (gradients_held): kept here as they are there
                    optimizer.zero_grad(set_to_none=not ddp)
            peak = tracker.get_tracker_snapshot("peak")
    finally:
        if created:
            dist.destroy_process_group()
    return {**_peak_figures(peak, tracker), "world_size": world,
            "engine": plan.strategy if fsdp else ("ddp" if world > 1 else "single"), "seconds": time.perf_counter() - start}


def _peak_figures(peak: dict, tracker) -> dict:
    snapshot = next(iter(peak.values()))
    return {"peak_bytes": float(snapshot["Total"]), "at_peak": _category_totals(snapshot),
            "category_max": _category_totals(getattr(tracker, "category_max", {}))}


def measure_stages(req, plan: ParallelPlan, steps: int = 2, jobs: int = 1) -> dict:
    """Per pipeline rank, the peak memory of its stages run as its schedule runs them (module docstring).
    Ranks are independent measurements, so `jobs` processes (spawned: each its own fake process group) share
    them out; one process runs them in turn."""
    start = time.perf_counter()
    groups = rank_groups(plan, jobs)
    if len(groups) == 1:
        stages = _measure_ranks(req, groups[0], steps)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("spawn")) as pool:
            done = pool.map(_measure_ranks, [req] * len(groups), groups, [steps] * len(groups))
            stages = sorted((stage for group in done for stage in group), key=lambda stage: stage["pp_rank"])
    return {"stages": stages, "world_size": plan.world, "engine": plan.strategy, "seconds": time.perf_counter() - start}


def rank_groups(plan: ParallelPlan, jobs: int) -> list[list[int]]:
    """The pipeline ranks dealt to at most `jobs` processes, costliest first to the least loaded. A rank runs
    its warm-up's forwards, two steady pairs and the last backward (`_run_stages`), in forward-equivalents:
    warm-up + 2 forwards and 3 backwards of about three forwards each (with the recomputation)."""
    from planner.memory.pipeline import warmup_chunks

    cost = {r: warmup_chunks(plan, r) + 2 + 3 * 3 for r in range(plan.pp)}
    groups: list[list[int]] = [[] for _ in range(max(1, min(jobs, plan.pp)))]
    for rank in sorted(cost, key=cost.get, reverse=True):
        min(groups, key=lambda g: sum(cost[r] for r in g)).append(rank)
    return [sorted(g) for g in groups if g]


def _measure_ranks(req, ranks: list[int], steps: int) -> list[dict]:
    """The stages of pipeline ranks `ranks`, one after the other, in this process."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from planner.memory.pipeline import shares, warmup_chunks
    from planner.plan.request import resolve_model
    from pretrain.engines.parallelize import build_mesh
    from pretrain.engines.pipeline import stage_ranges

    plan = checked_layout(req)
    cfg = model_config(resolve_model(req).shape, plan.tp)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("fake", rank=0, world_size=plan.world, store=FakeStore())
    try:
        mesh = build_mesh(plan, "cpu")  # rank 0's; every pipeline rank's groups have the same sizes
        ranges = stage_ranges(cfg.layers, plan)
        stages = []
        for share in shares(cfg.layers, plan):
            if share.rank not in ranks:
                continue
            fake_mode = FakeTensorMode()
            parts = nn.ModuleList(build_model(cfg, plan, req, fake_mode, mesh=mesh, part={
                "layers": ranges[sid], "embedding": sid == 0, "head": sid == plan.pp_stages - 1}) for sid in share.stages)
            chunks = min(warmup_chunks(plan, share.rank) + 1, plan.grad_accum * plan.pp_virtual)
            figures = _run_stages(parts, plan, cfg, fake_mode, chunks, steps)
            stages.append({"pp_rank": share.rank, "stages": list(share.stages), "microbatches_in_flight": chunks,
                           **figures})
    finally:
        if created:
            dist.destroy_process_group()
    return stages


def _run_stages(parts: nn.ModuleList, plan: ParallelPlan, cfg: ModelConfig, fake_mode, chunks: int, steps: int) -> dict:
    """One pipeline rank's step as torch's 1F1B runs it: `chunks - 1` warm-up forwards, then one forward and
    one backward at a time, then the cool-down; every backward but the last without FSDP's gradient
    reduction and resharding (what `PipelineStage` sets: gradients accumulate unsharded), then AdamW, under
    FSDPMemTracker. The `steps - 1` steps before it run on zero gradients: they create the optimizer states,
    which is all an earlier step leaves behind.

    What is run is what reaches the step's peak, and no more. The steady state repeats itself: once one
    micro-batch has gone backward (its gradients accumulated) and the next forward is in, memory no longer
    grows, so the second 1F1B pair after the warm-up reaches the steady peak, if its backward is not the
    step's last (whose reduce-scatter frees the accumulated gradients as it goes). The cool-down only frees:
    each of its backwards holds one micro-batch fewer than the one before, so all but the last are dropped
    unrun (their graphs freed, as their backwards would free them) and the last runs as the schedule's last
    backward, with the reduce-scatter, one micro-batch in flight, as in the full schedule."""
    from pretrain.engines.parallelize import loss_context
    from pretrain.model import cross_entropy

    part = parts[0]  # one stage per rank (checked_layout)
    b, seq = plan.micro_batch, cfg.seq_len
    warm = chunks - 1
    # forwards run: the warm-up and two steady pairs whose backwards are not the step's last (the last rank
    # warms up with none, so its third pair holds the last backward)
    m = min(plan.grad_accum, warm + 2 + (warm == 0))
    warm = min(warm, m - 1)

    def forward():
        tracker.reset_mod_stats()  # per-module stats follow one call; the peak is global
        if part.embed is not None:
            x = torch.randint(0, cfg.vocab, (b, seq))
        else:  # the previous stage's output: this rank's sequence shard under TP
            x = torch.randn(b, seq // plan.tp, cfg.hidden, dtype=torch.bfloat16, requires_grad=True)
        with loss_context(plan):
            out = part(x)
            return cross_entropy(out, torch.randint(0, cfg.vocab, (b, seq))) if part.norm is not None else out

    def backward(out, last: bool):
        part.set_is_last_backward(last)
        part.set_reshard_after_backward(last)
        part.set_requires_gradient_sync(last)
        with loss_context(plan):
            out.backward() if out.dim() == 0 else out.backward(torch.ones_like(out))

    with fake_mode:
        optimizer = torch.optim.AdamW(parts.parameters(), lr=1e-4, foreach=False)
        tracker = _tracker_class(True)(part, optimizer)
        with tracker, sharding_propagation_untracked():
            for _ in range(steps - 1):
                for p in parts.parameters():
                    p.grad = torch.zeros_like(p)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            tracker.reset_mod_stats()
            held = [forward() for _ in range(warm)]
            for pair in range(m - warm):
                held.append(forward())
                backward(held.pop(0), last=not held and pair == m - warm - 1)
            if held:  # the cool-down: the last backward, the others' graphs freed unrun
                del held[:-1]
                backward(held.pop(), last=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            peak = tracker.get_tracker_snapshot("peak")
    return _peak_figures(peak, tracker)
