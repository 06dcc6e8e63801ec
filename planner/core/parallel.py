"""The parallel plan: how one job spreads over its GPUs, owned by one object (torchtitan's `ParallelDims`).

Ground floor: imports nothing from the project but `planner.core.errors`, so the planner, the trainer and
the launchers all read the same object. The planner's estimate request holds one, the memory model
reads its partitioning from it, run.yaml's `parallel:` section stores it whole, and the trainer's engine
(`pretrain.engines.build_engine`) applies it; nothing translates between them by hand.

The layout (a device mesh of `pp x dp_replicate x dp_shard x tp` ranks, pipeline outermost):
- `pp` ranks each hold a slice of the layers (a pipeline stage, or `pp_virtual` interleaved stages);
  `grad_accum` micro-batches flow through the pipeline per optimizer step (the schedule's m);
- `tp` ranks split every weight matrix (Megatron column/row-wise, sequence parallel on the norms);
- `ep` ranks (expert parallelism, a mixture-of-experts model only) split each MoE layer's routed experts, E / ep
  each, and trade tokens with two all-to-alls per layer and pass (dispatch, combine). As torchtitan lays it
  out, the EP group is taken from the data-parallel ranks (from the sharded ones under FSDP hybrid): `ep`
  divides them, and the expert weights are sharded (FSDP / ZeRO) over the `dp_shard / ep` ranks that hold
  the same experts, while every other weight is sharded over all `dp_shard`;
- the `world / tp` data-parallel ranks split each batch; of those, `dp_shard` ranks partition the model
  states (ZeRO stage 1-3 or an FSDP mode) and `dp_replicate` groups hold copies (FSDP hybrid shard);
- the batch rule, written only here: global_batch = micro_batch x grad_accum x data-parallel ranks
  (sequences per optimizer step).

`validate` runs once. Its messages name config keys (`parallel.tp`); the planner's CLI passes
`CLI_FLAGS` so the same rules speak in flags (`--tp`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from planner.core.errors import PlannerError

ENGINES = ("single", "ddp", "deepspeed", "fsdp")
FSDP_MODES = ("full", "shard-grad-op", "hybrid", "no-shard")
#: Pipeline schedules (torch.distributed.pipelining): GPipe, 1F1B (Narayanan et al. 2021), interleaved 1F1B
#: (several stages per rank, Megatron's virtual pipeline), and the interleaved zero-bubble schedule (Qi et al. 2023).
PP_SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zero-bubble")
#: The schedules that run several stages per rank (`pp_virtual` > 1).
MULTI_STAGE_SCHEDULES = ("interleaved-1f1b", "zero-bubble")
OFFLOAD = ("none", "optimizer", "params", "all")
#: The most sequences a rank takes per forward (micro_batch) or per step (grad_accum): far past any run's, low
#: enough that a step's time and memory stay finite numbers.
MAX_SEQUENCES_PER_RANK = 1 << 20
#: ZeRO stage each FSDP mode partitions like (PyTorch FSDP docs: SHARD_GRAD_OP ~ ZeRO-2, FULL_SHARD ~ ZeRO-3).
FSDP_STAGE = {"no-shard": 0, "shard-grad-op": 2, "full": 3, "hybrid": 3}
#: Every layout the planner compares, by name (engine and how it partitions; `node`: hybrid sharding
#: within one node). The one list: compare, the fewest-GPUs table and the trainer's engines read it.
STRATEGIES: dict[str, dict] = {
    "ddp": {"engine": "ddp"},
    "zero1": {"engine": "deepspeed", "zero_stage": 1},
    "zero2": {"engine": "deepspeed", "zero_stage": 2},
    "zero2+offload-opt": {"engine": "deepspeed", "zero_stage": 2, "offload": "optimizer"},
    "zero3": {"engine": "deepspeed", "zero_stage": 3},
    "zero3+offload-opt": {"engine": "deepspeed", "zero_stage": 3, "offload": "optimizer"},
    "zero3+offload-all": {"engine": "deepspeed", "zero_stage": 3, "offload": "all"},
    "fsdp-shard-grad-op": {"engine": "fsdp", "fsdp_mode": "shard-grad-op"},
    "fsdp-full": {"engine": "fsdp", "fsdp_mode": "full"},
    "fsdp-hybrid": {"engine": "fsdp", "fsdp_mode": "hybrid", "dp_shard": "node"},
    "fsdp-full+offload": {"engine": "fsdp", "fsdp_mode": "full", "offload": "all"},
}
#: The strategies of the "fewest GPUs that fit" table (no offload: it trades step time for memory).
FEWEST_GPUS_STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp-shard-grad-op", "fsdp-full")
#: The planner's flags for each key, so CLI errors name what the user typed.
CLI_FLAGS = {"engine": "--zero/--fsdp", "world": "--gpus", "nodes": "--nodes", "tp": "--tp", "ep": "--ep", "pp": "--pp",
             "pp_schedule": "--pp-schedule",
             "pp_virtual": "--pp-virtual", "pp_layers": "--pp-layers",
             "dp_shard": "--sharding-factor", "zero_stage": "--zero", "fsdp_mode": "--fsdp", "offload": "--offload",
             "micro_batch": "--micro-batch", "grad_accum": "--microbatches", "global_batch": "--batch-tokens"}


def config_key(field: str) -> str:
    return f"parallel.{field}"


def cli_flag(field: str) -> str:
    return CLI_FLAGS[field]


@dataclass
class ParallelPlan:
    """Everything about a job's layout; run.yaml's `parallel:` section holds it whole."""

    engine: str = "single"  # single | ddp | deepspeed | fsdp
    world: int | None = None  # ranks (GPUs); None: whatever the launcher starts
    nodes: int = 1
    tp: int = 1  # tensor-parallel degree
    pp: int = 1  # pipeline-parallel degree (ranks in one pipeline)
    pp_schedule: str = "1f1b"  # gpipe | 1f1b | interleaved-1f1b | zero-bubble
    pp_virtual: int = 1  # stages per pipeline rank (interleaved schedules)
    pp_layers: list[int] | None = None  # layers of each stage, first to last; None: an even split
    dp_shard: int | None = None  # FSDP hybrid: ranks one copy is sharded over; None: all data-parallel ranks
    zero_stage: int = 0  # DeepSpeed only
    fsdp_mode: str = "full"  # FSDP only: full | shard-grad-op | hybrid
    offload: str = "none"  # none | optimizer | params | all
    micro_batch: int = 4  # sequences per rank per forward
    grad_accum: int = 1
    global_batch: int | None = None  # sequences per optimizer step; None: micro x accum x dp at launch
    ep: int = 1  # expert-parallel degree (MoE): ranks the routed experts of a layer are split over

    # ---- derived layout -------------------------------------------------------------------------
    @property
    def dp(self) -> int:
        """Data-parallel ranks: each sees its own micro-batches."""
        return self._world() // (self.tp * self.pp)

    @property
    def pp_stages(self) -> int:
        """Pipeline stages in all: `pp` ranks x `pp_virtual` stages each."""
        return self.pp * self.pp_virtual

    @property
    def stage(self) -> int:
        """ZeRO numbering of what is partitioned: 0 nothing, 1 optimizer, 2 + gradients, 3 + parameters."""
        if self.engine == "deepspeed":
            return self.zero_stage
        return FSDP_STAGE[self.fsdp_mode] if self.engine == "fsdp" else 0

    @property
    def shard_degree(self) -> int:
        """Ranks the partitioned states are split over (1 when nothing is partitioned)."""
        if self.stage == 0:
            return 1
        if self.engine == "fsdp" and self.fsdp_mode == "hybrid":
            return min(self.dp_shard or self.dp, self.dp)
        return self.dp

    @property
    def expert_shard_degree(self) -> int:
        """Ranks the routed experts' partitioned states are split over: the shard group less the EP split
        (torchtitan's dp_shard_mod_ep); 1 when nothing is partitioned."""
        return max(1, self.shard_degree // self.ep) if self.stage else 1

    @property
    def dp_replicate(self) -> int:
        return self.dp // self.shard_degree if self.engine == "fsdp" else self.dp

    @property
    def batch(self) -> int:
        """Sequences per optimizer step: the batch rule."""
        return self.micro_batch * self.grad_accum * self.dp

    @property
    def strategy(self) -> str:
        """How model states are partitioned, by name: ddp, zero1-3, fsdp-<mode> (offload aside)."""
        if self.engine == "fsdp":
            return f"fsdp-{self.fsdp_mode}"
        return f"zero{self.zero_stage}" if self.engine == "deepspeed" else "ddp"

    @property
    def offload_optimizer(self) -> bool:
        """Optimizer states (and the fp32 master weights) live on the host; FSDP offloads everything together."""
        return self.offload in ("optimizer", "all") or (self.engine == "fsdp" and self.offload != "none")

    @property
    def offload_params(self) -> bool:
        return self.offload in ("params", "all")

    def mesh_dims(self) -> tuple[tuple[str, int], ...]:
        """The device mesh, outermost first: pp (when > 1), then data parallel, tp innermost, so a rank's
        tensor-parallel peers are neighbours (on one node): rank = (pp index x dp + dp index) x tp + tp index."""
        pipeline = (("pp", self.pp),) if self.pp > 1 else ()
        if self.engine == "fsdp":
            return (*pipeline, ("replicate", self.dp_replicate), ("shard", self.shard_degree), ("tp", self.tp))
        return (*pipeline, ("dp", self.dp), ("tp", self.tp))

    def dp_rank(self, rank: int) -> int:
        """Which data-parallel replica (which slice of every batch) global rank `rank` works on."""
        return (rank // self.tp) % self.dp

    def stage_layers(self, layers: int) -> list[int]:
        """Blocks per virtual pipeline stage, first to last: `pp_layers`, or an even split whose remainder
        goes to the middle stages (the first also holds the embedding, the last the head and the loss).
        The planner prices this split and the trainer cuts it."""
        stages = self.pp_stages
        if self.pp_layers is not None:
            split = list(self.pp_layers)
            if sum(split) != layers:
                raise PlannerError(f"--pp-layers: {split} holds {sum(split)} layers, the model has {layers}")
            return split
        if layers < stages:
            raise PlannerError(f"--pp: {stages} pipeline stages need at least {stages} layers (the model has {layers})")
        base, extra = divmod(layers, stages)
        order = list(range(1, stages - 1)) + [0, stages - 1] if stages > 2 else list(range(stages))
        split = [base] * stages
        for i in order[:extra]:
            split[i] += 1
        return split

    def pp_rank(self, rank: int) -> int:
        """Which pipeline rank (which stages) global rank `rank` runs."""
        return rank // (self.tp * self.dp)

    def _world(self) -> int:
        if self.world is None:
            raise PlannerError("parallel.world: not set (the launcher's WORLD_SIZE fills it in at start)")
        return self.world

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def from_flags(cls, gpus: int, *, zero: int | None = None, fsdp: str | None = None,
                   sharding_factor: int | None = None, offload: str = "none", tp: int = 1,
                   micro_batch: int = 1, pp: int = 1, pp_schedule: str = "1f1b", pp_virtual: int = 1,
                   microbatches: int | None = None, ep: int = 1) -> ParallelPlan:
        """The planner's flags (`--zero`, `--fsdp`, ...) as a plan, checked with the flags' names."""
        if zero is not None and fsdp is not None:
            raise PlannerError("--zero and --fsdp: choose one sharding strategy, not both")
        engine = "deepspeed" if zero is not None else "fsdp" if fsdp is not None else "ddp" if gpus > 1 else "single"
        if engine == "fsdp" and offload == "params":
            offload = "all"  # FSDP2 offloads parameters, gradients and optimizer states together
        if microbatches is None:  # enough micro-batches to fill the pipeline: twice its depth (torchtitan's habit)
            microbatches = 2 * pp if pp > 1 else 1
        plan = cls(engine=engine, world=gpus, tp=tp, dp_shard=sharding_factor, zero_stage=zero or 0,
                   fsdp_mode=fsdp or "full", offload=offload, micro_batch=micro_batch, grad_accum=microbatches,
                   pp=pp, pp_schedule=pp_schedule, pp_virtual=pp_virtual, ep=ep)
        return plan.validate(cli_flag)

    @classmethod
    def for_strategy(cls, name: str, world: int, *, tp: int = 1, micro_batch: int = 1,
                     gpus_per_node: int = 8, pipeline: ParallelPlan | None = None, ep: int = 1) -> ParallelPlan:
        """The plan for one of `STRATEGIES` on `world` ranks (hybrid shards within a node), with
        `pipeline`'s micro-batches per step and pipeline layout (pp, schedule, stages per rank, split) when given,
        and `ep` expert-parallel ranks."""
        kw = dict(STRATEGIES[name])
        if kw.get("dp_shard") == "node":
            kw["dp_shard"] = min(gpus_per_node, world)
        if kw["engine"] == "ddp" and world == 1:
            kw["engine"] = "single"
        if pipeline is not None:  # its micro-batches per step whatever the layout (they set memory and traffic)
            kw["grad_accum"] = pipeline.grad_accum
        if pipeline is not None and pipeline.pp > 1:
            kw.update(pp=pipeline.pp, pp_schedule=pipeline.pp_schedule, pp_virtual=pipeline.pp_virtual,
                      pp_layers=pipeline.pp_layers)
        return cls(world=world, tp=tp, micro_batch=micro_batch, ep=ep, **kw).validate(cli_flag)

    def with_world(self, world: int, label: Callable[[str], str] = config_key) -> ParallelPlan:
        """The plan on `world` ranks as launched; a stored global batch must still hold (the batch rule)."""
        engine = "ddp" if self.engine == "single" and world > 1 else self.engine
        try:
            return replace(self, world=world, engine=engine).validate(label)
        except PlannerError as exc:
            if self.world in (None, world):
                raise
            raise PlannerError(f"{exc} (the plan is for {self.world} ranks, {world} launched: "
                               "re-emit it for this size)") from None

    def with_global_batch(self, global_batch: int, label: Callable[[str], str] = config_key) -> ParallelPlan:
        """Accumulation steps so that micro x accum x dp = `global_batch` sequences."""
        per_pass = self.micro_batch * self.dp
        if global_batch < 1 or global_batch % per_pass:
            raise PlannerError(
                f"{label('global_batch')}: {global_batch:,} sequences is not a multiple of micro-batch "
                f"{self.micro_batch} x {self.dp} data-parallel ranks = {per_pass:,}; try "
                f"{max(1, round(global_batch / per_pass)) * per_pass:,}")
        return replace(self, grad_accum=global_batch // per_pass, global_batch=global_batch).validate(label)

    def to_dict(self) -> dict:
        return asdict(self)

    # ---- the rules, once --------------------------------------------------------------------------
    def validate(self, label: Callable[[str], str] = config_key) -> ParallelPlan:
        """Every rule about the layout; raises PlannerError naming the key (or flag). Returns self."""
        for message in self._problems(label):
            raise PlannerError(message)
        return self

    def _problems(self, k: Callable[[str], str]):
        one_of = "is not one of"
        if self.engine not in ENGINES:
            yield f"{k('engine')}: {self.engine!r} {one_of} {', '.join(ENGINES)}"
        for key in ("nodes", "tp", "ep", "pp", "pp_virtual", "micro_batch", "grad_accum"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                yield f"{k(key)}: {value!r} must be a whole number >= 1"
            elif key in ("micro_batch", "grad_accum") and value > MAX_SEQUENCES_PER_RANK:
                yield f"{k(key)}: {value:,} must be at most {MAX_SEQUENCES_PER_RANK:,}"
        for key in ("world", "dp_shard", "global_batch"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                yield f"{k(key)}: {value!r} must be a whole number >= 1"
        if self.zero_stage not in (0, 1, 2, 3):
            yield f"{k('zero_stage')}: {self.zero_stage!r} {one_of} 0, 1, 2, 3"
        if self.fsdp_mode not in FSDP_MODES:
            yield f"{k('fsdp_mode')}: {self.fsdp_mode!r} {one_of} {', '.join(FSDP_MODES)}"
        if self.offload not in OFFLOAD:
            yield f"{k('offload')}: {self.offload!r} {one_of} {', '.join(OFFLOAD)}"
        yield from self._offload_problems(k)
        yield from self._pipeline_problems(k)
        if self.dp_shard is not None and not (self.engine == "fsdp" and self.fsdp_mode == "hybrid"):
            yield f"{k('dp_shard')}: only applies to FSDP hybrid sharding"
        if self.zero_stage and self.engine != "deepspeed":
            yield f"{k('zero_stage')}: {self.zero_stage} applies to DeepSpeed only (engine is {self.engine})"
        if self.world is not None:
            yield from self._world_problems(k)

    def _offload_problems(self, k):
        o = self.offload
        if o == "none":
            return
        if self.engine in ("single", "ddp") or (self.engine == "deepspeed" and self.zero_stage == 0):
            yield f"{k('offload')}: CPU offload needs ZeRO ({k('zero_stage')} 1, 2 or 3) or FSDP full/hybrid"
        elif self.engine == "deepspeed" and o in ("params", "all") and self.zero_stage != 3:
            yield f"{k('offload')}: parameter offload needs {k('zero_stage')} 3 (got {self.zero_stage})"
        elif self.engine == "fsdp" and o == "optimizer":
            yield (f"{k('offload')}: FSDP offloads parameters, gradients and optimizer states together; "
                   "use all (or params)")
        elif self.engine == "fsdp" and FSDP_STAGE[self.fsdp_mode] < 3:
            yield f"{k('offload')}: FSDP CPU offload needs {k('fsdp_mode')} full or hybrid, not {self.fsdp_mode}"

    def _pipeline_problems(self, k):
        if self.pp_schedule not in PP_SCHEDULES:
            yield f"{k('pp_schedule')}: {self.pp_schedule!r} is not one of {', '.join(PP_SCHEDULES)}"
            return
        if not isinstance(self.pp_virtual, int) or not isinstance(self.grad_accum, int) or \
                not isinstance(self.pp, int) or self.pp < 1 or self.pp_virtual < 1 or self.grad_accum < 1:
            return  # reported above as not whole numbers
        if self.pp_virtual > 1 and self.pp == 1:
            yield f"{k('pp_virtual')}: {self.pp_virtual} stages per rank need a pipeline ({k('pp')} 2 or more)"
        elif self.pp_virtual > 1 and self.pp_schedule not in MULTI_STAGE_SCHEDULES:
            yield (f"{k('pp_virtual')}: {self.pp_virtual} stages per rank need an interleaved schedule "
                   f"({' or '.join(MULTI_STAGE_SCHEDULES)}), not {self.pp_schedule}")
        m = self.grad_accum
        if self.pp > 1 and self.pp_schedule != "gpipe" and m < self.pp:
            yield (f"{k('grad_accum')}: {m} micro-batches per step cannot fill a {self.pp_schedule} pipeline of "
                   f"{self.pp} ranks; use at least {self.pp}")
        if self.pp > 1 and self.pp_schedule in MULTI_STAGE_SCHEDULES and m % max(1, m // self.pp):
            rounds = max(1, m // self.pp)
            yield (f"{k('grad_accum')}: {m} micro-batches are not a multiple of the schedule's {rounds} rounds "
                   f"(m // pp); use {rounds * self.pp}")
        if self.pp_layers is not None:
            layers = list(self.pp_layers)
            if len(layers) != self.pp_stages or any(not isinstance(n, int) or n < 1 for n in layers):
                yield (f"{k('pp_layers')}: {layers} must list {self.pp_stages} whole numbers >= 1 "
                       f"(pp {self.pp} x pp_virtual {self.pp_virtual} stages)")

    def _world_problems(self, k):
        world = self.world
        if self.tp > world or world % self.tp:
            yield f"{k('tp')}: {self.tp} does not divide {k('world')} {world}"
            return
        if isinstance(self.pp, int) and self.pp >= 1 and world % (self.tp * self.pp):
            yield f"{k('pp')}: {self.pp} x {k('tp')} {self.tp} does not divide {k('world')} {world}"
            return
        if world % self.nodes:
            yield f"{k('nodes')}: {self.nodes} nodes do not split {k('world')} {world} evenly"
        if self.engine == "single" and world > 1:
            yield f"{k('engine')}: single runs one process; {world} ranks need ddp, deepspeed or fsdp"
        if self.dp_shard is not None and self.dp % min(self.dp_shard, self.dp):
            yield f"{k('dp_shard')}: {self.dp_shard} does not divide the {self.dp} data-parallel ranks"
        elif isinstance(self.ep, int) and self.ep > 1:
            group = self.shard_degree if self.engine == "fsdp" and self.stage else self.dp
            if group % self.ep:
                yield (f"{k('ep')}: {self.ep} does not divide the {group} data-parallel ranks it is taken from "
                       f"({'the shard group' if group != self.dp else 'world / tp / pp'})")
        if self.global_batch is not None and self.global_batch != self.batch:
            yield (f"{k('global_batch')}: {self.global_batch} sequences != {k('micro_batch')} {self.micro_batch} x "
                   f"{k('grad_accum')} {self.grad_accum} x {self.dp} data-parallel ranks = {self.batch}")

    def check_runnable(self, label: Callable[[str], str] = config_key) -> ParallelPlan:
        """What our trainer runs, beyond what the planner can estimate (Megatron + ZeRO, FSDP no-shard, EP beside
        anything but FSDP2 alone)."""
        if self.ep > 1 and self.engine != "fsdp":
            raise PlannerError(f"{label('ep')}: {self.ep}: expert parallelism runs composed with FSDP2 (torchtitan's "
                               f"layout); set engine fsdp (got {self.engine})")
        if self.ep > 1 and self.pp > 1:
            raise PlannerError(f"{label('ep')}: {self.ep} with {label('pp')} {self.pp}: expert parallelism inside "
                               "pipeline stages is not run yet; use one of them")
        if self.engine == "fsdp" and self.fsdp_mode == "no-shard":
            raise PlannerError(f"{label('fsdp_mode')}: no-shard is plain data parallelism; use engine ddp")
        if self.tp > 1 and self.engine == "deepspeed":
            raise PlannerError(f"{label('tp')}: DeepSpeed here runs without tensor parallelism (that needs "
                               "Megatron-DeepSpeed); for TP use FSDP (engine fsdp, a 2-D device mesh)")
        if self.tp > 1 and self.engine != "fsdp":
            raise PlannerError(f"{label('tp')}: tensor parallelism runs composed with FSDP2 on a 2-D device mesh; "
                               f"set engine fsdp (got {self.engine})")
        if self.pp > 1 and self.engine == "deepspeed":
            raise PlannerError(f"{label('pp')}: DeepSpeed's pipeline engine needs its own model API "
                               "(PipelineModule); plan pipeline parallelism with FSDP")
        if self.pp > 1 and self.pp_schedule == "zero-bubble":
            raise PlannerError(f"{label('pp_schedule')}: zero-bubble defers weight gradients past FSDP2's gradient "
                               "reduction, and its losses leave one process's within 10 steps here; use interleaved-1f1b")
        if self.pp > 1 and self.engine != "fsdp":
            raise PlannerError(f"{label('pp')}: pipeline stages run FSDP2 inside (torchtitan's layout); "
                               f"set engine fsdp (got {self.engine})")
        if self.tp > 1 and self.offload != "none":
            raise PlannerError(f"{label('offload')}: CPU offload with tensor parallelism is not supported; use none")
        return self

