"""The run schema: the one typed, torch-free description of a job, which run.yaml holds.

Sections: `model` (the shape the trainer builds), `parallel` (the layout, `planner.core.parallel`),
`data`, `optim`, `train`, `engine`, `tracking`, `planning` (every assumption the planner's estimate
rests on: hardware, a custom GPU entry written in whole, accounting convention, fragmentation,
runtime, flash attention, fine-tuning) and `plan` (the planner's predictions, logged next to the
measurements). `planner emit`, the ladder, the demo, `launch` and `pretrain.train` build and read only
this type; YAML goes in through `load_config` and out through `dump_config`, nowhere else.

A wrong type, an unknown key or a missing value fails at load time with a message naming the key
path (`parallel.micro_batch`), and cross-field rules (heads dividing hidden, batch sizes agreeing)
are checked in `validate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan


class ConfigError(PlannerError):
    """A run config that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int | None = None
    ffn_hidden: int | None = None
    vocab: int = 256
    seq_len: int = 64
    tied_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    init_std: float = 0.02
    # mixture of experts (`planner.model.shapes.MoE`, `pretrain.model.MoE`): experts 0 is a dense model
    experts: int = 0  # routed experts per MoE layer (E)
    top_k: int = 2  # routed experts per token
    expert_ffn: int | None = None  # one routed expert's width; None: the dense MLP's (ffn_hidden or 8h/3)
    shared_experts: int = 0  # experts every token passes through
    shared_ffn: int | None = None  # one shared expert's width; None: expert_ffn
    dense_layers: int = 0  # leading layers that keep a dense MLP
    capacity_factor: float | None = None  # None: dropless routing (the only one the trainer runs)
    router_aux_loss_coef: float = 0.01  # Switch / GShard load-balancing loss, added to the training loss
    # the architecture (`ARCHS`; planner.model.shapes.ModelShape): the fields below belong to one of them
    arch: str = "decoder"  # decoder (pretrain.model) | encoder (BERT, pretrain.encoder) | encoder-decoder (T5)
    mlp: str | None = None  # None: the architecture's (ARCH_MLPS' first); an encoder-decoder's relu or geglu
    max_positions: int | None = None  # encoder: learned positions' rows (None: seq_len)
    token_types: int = 0  # encoder: BERT's token-type (segment) embeddings (2 in bert-base)
    decoder_layers: int | None = None  # encoder-decoder: the decoder's blocks (None: as many as layers)
    head_dim: int | None = None  # encoder-decoder: T5's d_kv (None: hidden / heads)
    relative_buckets: int = 32  # encoder-decoder: relative position bias buckets per head
    decoder_start_id: int | None = None  # encoder-decoder: the decoder's first input (None: the data's pad id, T5's)


@dataclass
class DataConfig:
    train: str = "???"  # folder of packed token shards (pretrain.data.shards)
    eval: str | None = None  # held-out shards; None: no evaluation
    tokenizer: str | None = None  # tokenizer.json used to build the shards
    seed: int = 1234


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 100
    precision: str = "bf16-mixed"  # bf16-mixed | fp32
    seed: int = 1234
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint_every: int = 50
    checkpoint_dir: str = "checkpoints"  # relative to out_dir, inside it
    resume: bool = True  # resume from checkpoint_dir/latest when it exists
    log_every: int = 1
    max_skipped_steps: int = 10  # stop after this many consecutive skipped (non-finite or spiking) steps
    spike_factor: float = 0.0  # skip a step whose loss exceeds factor x rolling mean; 0 turns it off
    spike_window: int = 20
    activation_checkpointing: str = "none"  # one of ACTIVATION_CHECKPOINTING
    activation_checkpointing_every: int = 1  # the policy applies to every k-th block (torchtitan's layer SAC)
    keep_last_checkpoints: int = 3  # older complete checkpoints are deleted; `latest` and the one being written never
    objective: str | None = None  # clm | mlm | span-corruption (OBJECTIVES); None: the architecture's


@dataclass
class EngineConfig:
    """How the engine talks to the machine; what it does (the layout) is `parallel`."""

    ds_config: str | None = None  # path to an emitted ds_config.json; None: built from the parallel plan
    backend: str | None = None  # None: nccl on GPU, gloo on CPU
    timeout_s: int = 600


@dataclass
class TrackingConfig:
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "pretrain"
    run_name: str | None = None
    fallback_dir: str = "mlflow-offline"  # metrics kept here when the server is down
    #: a run of this name in the same experiment holds this one as a nested child (a ladder's runs); the
    #: parent is a grouping run tagged PARENT_RUN_TAG, which readers of runs leave out
    parent_run: str | None = None
    #: CPU, memory (and GPU where there is one) sampled into the run by MLflow's system-metrics monitor
    system_metrics: bool = True
    system_metrics_every_s: float = 5.0


#: The MLflow tag that marks a grouping (parent) run: it holds nested runs, no measurements of its own
PARENT_RUN_TAG = "pretrain.parent_run"

#: What the trainer recomputes in backward (`pretrain.activation_checkpointing`): nothing, whole blocks, or
#: torchtitan's op-level selective policy.
ACTIVATION_CHECKPOINTING = ("none", "full", "op")

#: The model families the trainer builds, and the pretraining objective each trains with: causal LM (GPT), masked
#: LM (BERT, Devlin et al. 2019), span corruption (T5, Raffel et al. 2020).
ARCHS = ("decoder", "encoder", "encoder-decoder")
OBJECTIVES = {"decoder": "clm", "encoder": "mlm", "encoder-decoder": "span-corruption"}
#: The fewest encoder inputs span corruption makes: 2 raw tokens (one kept, one noise) already give 3 (kept,
#: sentinel, EOS); `planner.model.shapes.span_corruption_raw_length` and the run schema share it.
MIN_SPAN_CORRUPTION_INPUTS = 3
#: The MLPs the trainer builds per architecture, its default first.
ARCH_MLPS = {"decoder": ("swiglu",), "encoder": ("gelu",), "encoder-decoder": ("relu", "geglu")}
#: The model parallelism the trainer runs per architecture, beyond data parallelism (DDP, FSDP2, DeepSpeed): tensor
#: (tp), pipeline (pp) and expert (ep: mixture-of-experts layers, which only decoders are built with).
ARCH_PARALLELISM = {"decoder": ("tp", "pp", "ep"), "encoder": ("tp", "pp"), "encoder-decoder": ("tp", "pp")}
_PARALLELISM_NAMES = {"tp": "tensor", "pp": "pipeline", "ep": "expert"}


def pipeline_blocks(m: ModelConfig) -> int:
    """The blocks pipeline stages split: an encoder-decoder's encoder blocks, then its decoder's (the planner's
    `ModelShape.n_blocks`)."""
    return m.layers + ((m.decoder_layers or m.layers) if m.arch == "encoder-decoder" else 0)


def parallel_refusal(arch: str, tp: int, pp: int, ep: int) -> tuple[str, int, str] | None:
    """The first degree of (tp, pp, ep) above one that the trainer does not run for `arch`, as (its name, its value,
    why), or None. One rule for both edges, each naming its own key: the planner's (`estimate`, `emit`: the model's
    resolution, `planner.plan.request.check_arch`: --ep) and the run schema's (`_validate_arch`: parallel.ep)."""
    for name, degree in (("tp", tp), ("pp", pp), ("ep", ep)):
        if degree > 1 and name not in ARCH_PARALLELISM[arch]:
            runs = ", ".join(_PARALLELISM_NAMES[n] for n in ARCH_PARALLELISM[arch])
            reason = " (mixture-of-experts layers are built in decoders only)" if name == "ep" else ""
            return name, degree, (f"{_PARALLELISM_NAMES[name]} parallelism is not run for {arch} models{reason}; they "
                                  f"train under DDP, FSDP2 or DeepSpeed, with {runs} parallelism")
    return None


def tensor_parallel_refusal(tp: int, heads: int, kv_heads: int | None) -> str | None:
    """Why `tp` cannot split the attention's heads (each rank holds whole query and key/value heads), or None. One
    rule for the planner's edge (`planner.plan.request.check_arch`: --tp) and the run schema's (parallel.tp)."""
    kv = kv_heads or heads
    if heads % tp or kv % tp:
        return f"{tp} must divide the {heads} attention heads and {kv} key/value heads"
    return None


def objective_of(cfg: RunConfig) -> str:
    """The run's objective: train.objective, or its architecture's."""
    return cfg.train.objective or OBJECTIVES.get(cfg.model.arch, "clm")


#: What a catalog entry describes: a GPU (data-sheet figures), or a CPU measured by `planner probe`.
DEVICES = ("gpu", "cpu")


#: A GPU entry's rates per dtype beyond its peak: measured by `planner probe` (attention) or published
#: (`planner.model.hardware.ACHIEVED_RATES`); and its bandwidths. The catalog loader checks the same fields.
GPU_RATE_FIELDS = ("attention_tflops", "matmul_tflops", "flash_attention_tflops")
GPU_BANDWIDTH_FIELDS = ("interconnect_gbps", "hbm_gbps", "network_gbps", "shard_collectives_gbps", "all_gather_gbps")
#: The published achieved rates of a GPU's kernels: below its data-sheet peak for the same dtype.
GPU_ACHIEVED_FIELDS = ("matmul_tflops", "flash_attention_tflops")


def rate_above_peak(entry) -> str | None:
    """The first achieved rate of a catalog entry (`GPU_ACHIEVED_FIELDS`) above its dtype's peak_tflops, as
    "key.dtype: rate is above peak_tflops.dtype peak", or None. One rule for the catalog loader and gpu_spec."""
    for key in GPU_ACHIEVED_FIELDS:
        for dtype, tflops in getattr(entry, key).items():
            peak = entry.peak_tflops.get(dtype)
            if peak is not None and tflops > peak:
                return f"{key}.{dtype}: {tflops:g} is above peak_tflops.{dtype} {peak:g} (a kernel's rate is at most peak)"
    return None


@dataclass
class GPUSpec:
    """A GPU that is not in the built-in catalog (a user's `--gpu-catalog` entry), written in whole."""

    memory_gib: float = 80.0
    peak_tflops: dict[str, float] = field(default_factory=dict)  # dense, per dtype
    price_per_hour: float = 0.0
    interconnect_gbps: float = 0.0
    description: str = ""
    hbm_gbps: float = 0.0
    network_gbps: float = 0.0
    device: str = "gpu"  # one of DEVICES
    attention_tflops: dict[str, float] = field(default_factory=dict)  # measured by `planner probe`; {} on a GPU
    shard_collectives_gbps: float = 0.0  # all-gather / reduce-scatter bus bandwidth, where not the all-reduce's
    all_gather_gbps: float = 0.0  # an all-gather's alone (ZeRO 1-2's parameter gather), where measured
    matmul_tflops: dict[str, float] = field(default_factory=dict)  # a large GEMM's published achieved rate
    flash_attention_tflops: dict[str, float] = field(default_factory=dict)  # FlashAttention-2's published rate


@dataclass
class PlanningConfig:
    """The assumptions behind the plan; with `model`, `parallel` and `train` they make the estimate."""

    params: float | None = None  # the count planned with, when given as --params (the shape is inferred)
    gpu: str = "a100-80gb"
    gpu_spec: GPUSpec | None = None  # set when `gpu` is not a built-in entry (or overrides one)
    gpus_per_node: int = 8
    tokens: float | None = None  # the plan's training tokens; None: 20 per parameter
    convention: str | None = None  # model-state accounting; None: the engine's own
    flash_attention: bool = True
    mfu: float | None = None  # the user's measured MFU; None: the step-time model's prediction
    price: float | None = None  # USD per GPU-hour; None: the catalog's
    runtime_gib: float = 0.75
    fragmentation: float = 0.15
    finetune: str | None = None  # None: pretraining; full: all weights (adapters are not trained here)


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelPlan = field(default_factory=ParallelPlan)  # planner.core.parallel: the one layout
    engine: EngineConfig = field(default_factory=EngineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    planning: PlanningConfig | None = None  # None: no planner made this config (memory is not pre-checked)
    plan: dict[str, Any] = field(default_factory=dict)  # the planner's predictions, written by `planner emit`


#: A run or pipeline config is kilobytes; a larger file is refused unread (it is not one, or it is a trap).
MAX_CONFIG_BYTES = 4 << 20


def _load_yaml_mapping(path: Path):
    """A YAML file that must hold a mapping; one ConfigError for anything else (OmegaConf loads safely:
    tags such as !!python/object are refused, no code runs). Read through `read_input`: a FIFO, a device or
    a file over MAX_CONFIG_BYTES is refused without being read (never hung on)."""
    import io

    import yaml
    from omegaconf import DictConfig, OmegaConf

    from planner.core.io import SpecialFileError, read_input

    if path.is_dir():
        raise ConfigError(f"config: {path} is a folder, not a YAML file")
    if not path.exists():
        raise ConfigError(f"config: {path} does not exist")
    try:
        text = read_input(path, max_bytes=MAX_CONFIG_BYTES).decode("utf-8")
    except SpecialFileError as exc:
        raise ConfigError(f"config: {path} {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid YAML text: not UTF-8 ({exc.reason})") from None
    try:
        loaded = OmegaConf.load(io.StringIO(text))
    except OSError as exc:  # OmegaConf's "Invalid loaded object type" (a bare number): no file error, the text
        raise ConfigError(f"config: {path} holds a bare value ({exc}), not a mapping of keys to values") from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"config: {path} is not valid YAML text: {first}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config: {path} holds a {type(loaded).__name__}, not a mapping of keys to values")
    return loaded


def _check_sections(schema: type, doc: dict, prefix: str) -> None:
    """Every section the schema holds as a dataclass is a mapping in the file (or null where optional):
    OmegaConf would otherwise fail with a TypeError that names no key."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in doc:
            continue
        kind, value, key = hints[f.name], doc[f.name], f"{prefix}{f.name}"
        origin = typing.get_origin(kind)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if origin in (typing.Union, types.UnionType) and len(args) == 1:
            if value is None:
                continue  # an optional section left out
            kind, origin, args = args[0], typing.get_origin(args[0]), list(typing.get_args(args[0]))
        if dataclasses.is_dataclass(kind):
            _check_section(kind, value, key)
        elif origin is dict:
            if not isinstance(value, dict):
                raise ConfigError(f"config: {key}: must be a mapping of keys to values, not {type(value).__name__}")
            if len(args) == 2 and args[1] in (int, float, str, bool):  # OmegaConf lets a list through here
                for name, item in value.items():
                    if isinstance(item, dict | list):
                        raise ConfigError(f"config: {key}.{name}: must be a {args[1].__name__}, "
                                          f"not {type(item).__name__}")
        elif origin is list:
            if not isinstance(value, list):
                raise ConfigError(f"config: {key}: must be a list, not {type(value).__name__}")
            if len(args) == 1 and dataclasses.is_dataclass(args[0]):
                for i, item in enumerate(value):
                    _check_section(args[0], item, f"{key}[{i}]")


def _check_section(section: type, value, key: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"config: {key}: must be a mapping of keys to values, not {type(value).__name__}")
    _check_sections(section, value, key + ".")


def load_structured(schema: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """A dataclass instance of `schema` from YAML (optional) and dotlist overrides (`train.steps=20`).

    Wrong types, unknown keys and missing values fail here, as one ConfigError naming the key.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.structured(schema)
        if path is not None:
            loaded = _load_yaml_mapping(Path(path))
            _check_sections(schema, OmegaConf.to_container(loaded), "")
            merged = OmegaConf.merge(merged, loaded)
        if overrides:
            for override in overrides:
                _check_override(override)
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
            except TypeError:  # OmegaConf: "Cannot merge incompatible container types" (an item of a list)
                raise ConfigError(f"overrides {list(overrides)}: an item of a list (sources.0.path) cannot be set "
                                  "from the command line; edit the YAML") from None
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"config: missing value for {', '.join(missing)}")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: {_omegaconf_message(exc)}") from None


def _check_override(override: str) -> None:
    """key=value as typed: OmegaConf parses the value as YAML, where ` #` starts a comment (name=x #y would
    silently become name=x) and a control character ends a line."""
    value = override.partition("=")[2]
    if re.search(r"\s#", value) or value.startswith("#") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"override {override!r}: a value with ' #' or a control character is not read as typed "
                          "(YAML would cut a comment or a line); leave them out")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The run config from YAML and overrides, validated; ds_config resolved beside the YAML."""
    cfg: RunConfig = load_structured(RunConfig, path, overrides)
    if path is not None and cfg.engine.ds_config and not Path(cfg.engine.ds_config).is_absolute():
        cfg.engine.ds_config = str(Path(path).resolve().parent / cfg.engine.ds_config)  # beside run.yaml
    validate(cfg)
    return cfg


#: The keys of a DeepSpeed JSON the run config must agree with: each a whole number >= 1.
DS_BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def load_ds_config(path: str | Path) -> dict[str, Any]:
    """An emitted (or hand-written) DeepSpeed JSON, typed where we read it: a JSON object, the batch
    keys whole numbers >= 1, `zero_optimization` a mapping with a stage of 0-3. Read through
    `read_input` (regular file, bounded size); a bad value fails in one line naming the file and key."""
    import json

    from planner.core.io import SpecialFileError, read_input

    where = f"engine.ds_config: {path}"
    try:
        doc = json.loads(read_input(path, max_bytes=MAX_CONFIG_BYTES))
    except SpecialFileError as exc:
        raise ConfigError(f"engine.ds_config: {exc.filename}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: holds a {type(doc).__name__}, not a JSON object")
    for key in DS_BATCH_KEYS:
        if key in doc and (isinstance(doc[key], bool) or not isinstance(doc[key], int) or doc[key] < 1):
            raise ConfigError(f"{where}: {key} {doc[key]!r} must be a whole number >= 1")
    zero = doc.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{where}: zero_optimization must be an object, not {type(zero).__name__}")
    if zero.get("stage", 0) not in (0, 1, 2, 3) or isinstance(zero.get("stage"), bool):
        raise ConfigError(f"{where}: zero_optimization.stage {zero['stage']!r} is not one of 0, 1, 2, 3")
    return doc


def dump_config(cfg: RunConfig, header: str | None = None) -> str:
    """run.yaml's text for `cfg`: every section in schema order, byte-identical for equal configs."""
    import yaml

    text = yaml.safe_dump(to_plain(cfg), sort_keys=False, default_flow_style=False)
    return (f"# {header}\n" if header else "") + text


def to_plain(cfg: RunConfig) -> dict[str, Any]:
    """`cfg` as plain dicts, lists and scalars (what YAML and JSON hold)."""
    from dataclasses import asdict

    return asdict(cfg)


def _omegaconf_message(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    head = lines[0] if lines else type(exc).__name__
    return f"{key}: {head}" if key and key not in head else head


def validate(cfg: RunConfig) -> None:
    m, t, e = cfg.model, cfg.train, cfg.engine
    try:
        cfg.parallel.validate().check_runnable()
    except PlannerError as exc:
        raise ConfigError(str(exc)) from None
    blocks = pipeline_blocks(m)
    checks = [
        (m.hidden % m.heads == 0, f"model.heads: {m.heads} does not divide model.hidden {m.hidden}"),
        (m.arch != "decoder" or (m.hidden // m.heads) % 2 == 0,
         f"model.hidden / model.heads = {m.hidden // m.heads} must be even for rotary positions"),
        (m.kv_heads is None or (m.kv_heads > 0 and m.heads % m.kv_heads == 0),
         f"model.kv_heads: {m.kv_heads} must divide model.heads {m.heads}"),
        (min(m.layers, m.hidden, m.heads, m.vocab, m.seq_len) > 0, "model: layers, hidden, heads, vocab, seq_len must be positive"),
        (t.steps > 0, f"train.steps: {t.steps} must be positive"),
        (t.precision in ("bf16-mixed", "fp32"), f"train.precision: {t.precision!r} is not one of bf16-mixed, fp32"),
        (t.activation_checkpointing in ACTIVATION_CHECKPOINTING, f"train.activation_checkpointing: "
         f"{t.activation_checkpointing!r} is not one of {', '.join(ACTIVATION_CHECKPOINTING)}"),
        (t.activation_checkpointing_every > 0,
         f"train.activation_checkpointing_every: {t.activation_checkpointing_every} must be positive"),
        (t.checkpoint_every > 0 and t.eval_every > 0 and t.log_every > 0,
         "train.checkpoint_every, train.eval_every and train.log_every must be positive"),
        (tensor_parallel_refusal(cfg.parallel.tp, m.heads, m.kv_heads) is None,
         f"parallel.tp: {tensor_parallel_refusal(cfg.parallel.tp, m.heads, m.kv_heads)} (model.heads, model.kv_heads)"),
        (cfg.parallel.tp == 1 or not m.tied_embeddings,
         "parallel.tp: tied embeddings are not split by tensor parallelism here; set model.tied_embeddings false"),
        (cfg.parallel.pp == 1 or not m.tied_embeddings,
         "parallel.pp: a pipeline holds the embedding and the head on different stages; set model.tied_embeddings false"),
        (cfg.parallel.pp_layers is None or sum(cfg.parallel.pp_layers) == blocks,
         f"parallel.pp_layers: {cfg.parallel.pp_layers} holds {sum(cfg.parallel.pp_layers or [])} layers, the model "
         f"has {blocks}" + (" (an encoder-decoder's encoder blocks, then its decoder's)" if m.arch == "encoder-decoder"
                            else "")),
        (cfg.parallel.pp == 1 or blocks >= cfg.parallel.pp_stages,
         f"parallel.pp: {cfg.parallel.pp_stages} pipeline stages need at least as many layers (model.layers {m.layers}"
         + (f" + model.decoder_layers {blocks - m.layers})" if m.arch == "encoder-decoder" else ")")),
        (e.ds_config is None or Path(e.ds_config).is_file(), f"engine.ds_config: {e.ds_config} does not exist"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (cfg.optim.lr > 0, f"optim.lr: {cfg.optim.lr} must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _validate_arch(cfg)
    _validate_moe(m, cfg.parallel, t)
    from planner.core import checks as check

    check.name("name", cfg.name)
    check.no_control("out_dir", cfg.out_dir)
    # inside out_dir: checkpoints are pruned to keep_last, which must never reach another job's folder
    check.relative_inside("train.checkpoint_dir", t.checkpoint_dir)
    check.relative_inside("tracking.fallback_dir", cfg.tracking.fallback_dir)
    if cfg.tracking.parent_run is not None:
        check.name("tracking.parent_run", cfg.tracking.parent_run)
    check.number("tracking.system_metrics_every_s", cfg.tracking.system_metrics_every_s, 0.5, 3600.0)
    check.number("optim.lr", cfg.optim.lr, 0.0, check.MAX_LR, lo_open=True)
    check.number("optim.grad_clip", cfg.optim.grad_clip, 0.0, 1e12)
    check.number("optim.min_lr_ratio", cfg.optim.min_lr_ratio, 0.0, 1.0)
    check.number("optim.weight_decay", cfg.optim.weight_decay, 0.0, 10.0)
    # Adam's own ranges (torch.optim.Adam refuses the rest with a traceback): betas in [0, 1), eps > 0
    check.number("optim.beta1", cfg.optim.beta1, 0.0, 1.0 - 1e-12)
    check.number("optim.beta2", cfg.optim.beta2, 0.0, 1.0 - 1e-12)
    check.number("optim.eps", cfg.optim.eps, 0.0, 1.0, lo_open=True)
    # the model's constants: a NaN or non-positive one makes every step non-finite (all skipped, silently)
    check.number("model.init_std", m.init_std, 0.0, 10.0, lo_open=True)
    check.number("model.norm_eps", m.norm_eps, 0.0, 1.0, lo_open=True)
    check.number("model.rope_theta", m.rope_theta, 1.0, 1e12)
    for key, seed in (("data.seed", cfg.data.seed), ("train.seed", t.seed)):
        check.integer(key, seed, 0, 2**32 - 1)  # numpy's generators take unsigned 32-bit seeds
    check.number("train.spike_factor", t.spike_factor, 0.0, 1e6)
    check.integer("train.keep_last_checkpoints", t.keep_last_checkpoints, 1)
    check.integer("engine.timeout_s", e.timeout_s, 1)
    if cfg.planning is not None:
        _validate_planning(cfg.planning)


def _validate_arch(cfg: RunConfig) -> None:
    """The architecture, its own fields and its objective; what the trainer runs an encoder or an encoder-decoder
    with (DDP, FSDP2 or DeepSpeed, tensor and pipeline parallelism: `parallel_refusal`; no recomputation yet)."""
    from planner.core import checks as check

    m, plan, t = cfg.model, cfg.parallel, cfg.train
    if m.arch not in ARCHS:
        raise ConfigError(f"model.arch: {m.arch!r} is not one of {', '.join(ARCHS)}")
    if t.objective is not None and t.objective not in OBJECTIVES.values():
        raise ConfigError(f"train.objective: {t.objective!r} is not one of {', '.join(OBJECTIVES.values())}")
    if objective_of(cfg) != OBJECTIVES[m.arch]:
        raise ConfigError(f"train.objective: {t.objective}: {'an' if m.arch[0] == 'e' else 'a'} {m.arch} model trains "
                          f"with {OBJECTIVES[m.arch]}")
    if m.mlp is not None and m.mlp not in ARCH_MLPS[m.arch]:
        raise ConfigError(f"model.mlp: {m.mlp!r}: {m.arch} models are built with {', '.join(ARCH_MLPS[m.arch])}")
    if m.arch != "decoder" and m.kv_heads not in (None, m.heads):
        raise ConfigError(f"model.kv_heads: {m.kv_heads}: grouped-query attention is built in decoders only "
                          f"(model.arch is {m.arch})")
    own = {"encoder": ("max_positions", "token_types"),
           "encoder-decoder": ("decoder_layers", "head_dim", "decoder_start_id")}
    for arch, keys in own.items():
        for key in keys:
            value = getattr(m, key)
            if value not in (None, 0) and m.arch != arch:
                raise ConfigError(f"model.{key}: {value}: only an {arch} model has it (model.arch is {m.arch})")
            if value is not None:
                check.integer(f"model.{key}", value, 0 if key in ("token_types", "decoder_start_id") else 1)
    check.integer("model.relative_buckets", m.relative_buckets, 2)
    if m.decoder_start_id is not None:
        check.integer("model.decoder_start_id", m.decoder_start_id, 0, m.vocab - 1)
    if m.max_positions is not None and m.seq_len > m.max_positions:
        raise ConfigError(f"model.seq_len: {m.seq_len} is longer than model.max_positions {m.max_positions}")
    if m.arch == "encoder-decoder" and m.head_dim is None and m.hidden % m.heads:
        raise ConfigError(f"model.heads: {m.heads} does not divide model.hidden {m.hidden} (or set model.head_dim)")
    refusal = parallel_refusal(m.arch, plan.tp, plan.pp, plan.ep)
    if refusal is not None:
        name, degree, why = refusal
        raise ConfigError(f"parallel.{name}: {degree}: {why}")
    if m.arch == "decoder":
        return
    refusals = [
        (m.experts > 0, f"model.experts: {m.experts}: mixture-of-experts layers are built in decoders only"),
        (m.arch == "encoder-decoder" and m.seq_len < MIN_SPAN_CORRUPTION_INPUTS, f"model.seq_len: {m.seq_len} inputs "
         f"are too few for span corruption (at least {MIN_SPAN_CORRUPTION_INPUTS})"),
        (t.activation_checkpointing != "none", f"train.activation_checkpointing: {t.activation_checkpointing}: "
         f"recomputation is run (and planned) for decoders only; use none for {m.arch} models"),
    ]
    for refused, message in refusals:
        if refused:
            raise ConfigError(message)


#: The MoE fields of ModelConfig and their defaults: a dense model (experts 0) leaves them so.
MOE_DEFAULTS = {f.name: f.default for f in fields(ModelConfig)
                if f.name in ("top_k", "expert_ffn", "shared_experts", "shared_ffn", "dense_layers", "capacity_factor",
                              "router_aux_loss_coef")}


def _validate_moe(m: ModelConfig, plan: ParallelPlan, t: TrainConfig) -> None:
    """A mixture-of-experts model: its shape (`planner.model.shapes.MoE`'s rules) and what the trainer runs it
    with (FSDP2 or one process / DDP, experts split over `parallel.ep`; no TP, PP or DeepSpeed yet)."""
    if m.experts == 0:
        if plan.ep > 1:
            raise ConfigError(f"parallel.ep: {plan.ep} expert-parallel ranks need a mixture-of-experts model "
                              "(model.experts > 0)")
        stray = [key for key, default in MOE_DEFAULTS.items() if getattr(m, key) != default]
        if stray:
            raise ConfigError(f"model.{stray[0]}: {getattr(m, stray[0])!r} applies to a mixture-of-experts model; "
                              "model.experts is 0 (dense)")
        return
    from planner.core import checks as check

    check.integer("model.experts", m.experts, 1)
    check.integer("model.top_k", m.top_k, 1, m.experts)
    check.integer("model.shared_experts", m.shared_experts, 0)
    check.integer("model.dense_layers", m.dense_layers, 0, m.layers - 1)
    for key in ("expert_ffn", "shared_ffn"):
        if getattr(m, key) is not None:
            check.integer(f"model.{key}", getattr(m, key), 1)
    check.number("model.router_aux_loss_coef", m.router_aux_loss_coef, 0.0, 10.0)
    refusals = [
        (m.capacity_factor is not None, f"model.capacity_factor: {m.capacity_factor}: the trainer routes dropless "
         "(no token dropping); leave it out"),
        (m.experts % plan.ep != 0, f"parallel.ep: {plan.ep} does not divide model.experts {m.experts}"),
        (plan.engine == "deepspeed", "parallel.engine: deepspeed does not run the MoE layer here; use fsdp"),
        (plan.pp > 1, "parallel.pp: pipeline stages of an MoE model are not run yet (the router's loss is per stage)"),
        (t.activation_checkpointing == "op", "train.activation_checkpointing: op is planned for the dense block, "
         "not an MoE layer; use full or none"),
    ]
    for refused, message in refusals:
        if refused:
            raise ConfigError(message)


def _validate_planning(p: PlanningConfig) -> None:
    from planner.core import checks as check

    check.name("planning.gpu", p.gpu)
    check.integer("planning.gpus_per_node", p.gpus_per_node, 1, 1 << 10)
    if p.mfu is not None:
        check.number("planning.mfu", p.mfu, 0.0, 1.0, lo_open=True)
    check.number("planning.runtime_gib", p.runtime_gib, 0.0, 64.0)
    check.number("planning.fragmentation", p.fragmentation, 0.0, 0.5)
    if p.params is not None:
        check.number("planning.params", p.params, 1e5, 1e14)
    if p.tokens is not None:
        check.number("planning.tokens", p.tokens, 1e3, 1e17)
    if p.price is not None:
        check.number("planning.price", p.price, 0.0, 1000.0)
    if p.finetune not in (None, "full"):
        raise ConfigError(f"planning.finetune: {p.finetune!r} is not trained here (only full, or none)")
    if p.gpu_spec is not None:
        check.number("planning.gpu_spec.memory_gib", p.gpu_spec.memory_gib, 0.0, 1e4, lo_open=True)
        for dtype, tflops in p.gpu_spec.peak_tflops.items():
            check.number(f"planning.gpu_spec.peak_tflops.{dtype}", tflops, 0.0, 1e6, lo_open=True)
        check.number("planning.gpu_spec.price_per_hour", p.gpu_spec.price_per_hour, 0.0, 1000.0)
        for key in GPU_BANDWIDTH_FIELDS:
            check.number(f"planning.gpu_spec.{key}", getattr(p.gpu_spec, key), 0.0, 1e6)
        for key in GPU_RATE_FIELDS:
            for dtype, tflops in getattr(p.gpu_spec, key).items():
                check.number(f"planning.gpu_spec.{key}.{dtype}", tflops, 0.0, 1e6, lo_open=True)
        above = rate_above_peak(p.gpu_spec)
        if above is not None:
            raise ConfigError(f"planning.gpu_spec.{above}")
        if p.gpu_spec.device not in DEVICES:
            raise ConfigError(f"planning.gpu_spec.device: {p.gpu_spec.device!r} is not one of {', '.join(DEVICES)}")


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """`model.hidden: 64`-style flat dict (MLflow params)."""
    from dataclasses import asdict

    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", {k: v for k, v in asdict(cfg).items() if k != "plan"})
    return out
