"""Fine-tuning memory: full, LoRA, QLoRA and prompt tuning, term by term.

Trainable parameters
- LoRA (Hu et al. 2021, §4.1): each adapted matrix W (d_out x d_in) gains A (r x d_in) and
  B (d_out x r): r·(d_in + d_out) trainable parameters; everything else is frozen. PEFT's count
  (`inject_adapter_in_model`, `target_modules`) is the same, checked on our model.
- QLoRA (Dettmers et al. 2023): the same adapters on a base whose linear layers are stored in 4-bit
  NormalFloat with double quantisation: 4 bits + 0.127 bits of quantisation constants per weight
  (§3: 8/64 + 32/(64·256)); embeddings, head and norms stay 16-bit. Its paged optimizer only moves
  states to the CPU under memory pressure: they are counted on the GPU here.
- Prompt tuning (Lester et al. 2021): k soft tokens of width h, k·h parameters (PEFT's
  `num_virtual_tokens x token_dim`); the sequence grows by k.

States (PEFT's default, `autocast_adapter_dtype=True`): adapters and soft tokens in fp32 (4 B),
their fp32 gradients (4 B) and AdamW's two fp32 states (8 B); frozen 16-bit base weights 2 B.

Activations, per layer and token (measured on our model with PEFT adapters, 16-bit base, by the
saved-tensor hooks of `tests/test_finetune.py`): a frozen linear keeps no input (it needs no weight
gradient); each adapted module keeps its own fp32 copy of its input (PEFT casts it to the adapter's
dtype: 4·d_in) and the fp32 r-wide A output (4r). RMSNorms keep their 16-bit input and the fp32
1/rms (2h + 4, `pretrain.model.RMSNormFunction`); SDPA keeps q, k and v (k and v at the kv heads'
width: SDPA shares them itself), its output and log-sum-exp; SwiGLU keeps gate and up outputs
(2·2f; SiLU is recomputed). In the first layer nothing before the first adapted module is kept (its
input needs no gradient). The output layer keeps the final norm (2h + 4) and the fp32 log-softmax (4V); the frozen embedding keeps no token ids. Prompt
tuning is the no-adapter case with a gradient flowing into layer 0, over s + k tokens (derived from
the same rules; our model takes no soft prompt, so it is not measured).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.core.errors import PlannerError
from planner.model.shapes import ModelShape

METHODS = ("full", "lora", "qlora", "prompt")
#: Our model's module names, in data-flow order within a layer (with the step each belongs to).
MODULES = ("q", "k", "v", "o", "gate", "up", "down")
#: Hugging Face / PEFT names for the same matrices.
ALIASES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
           "down_proj": "down"}
#: Hu et al. 2021 adapt W_q and W_v (§7.1); PEFT's default for LLaMA-style models is the same.
DEFAULT_LORA_MODULES = ("q", "v")
NF4_DQ_BYTES = (4 + 0.127) / 8  # QLoRA §3: NF4 weight plus double-quantised constants
FP32 = 4
#: Position in a layer's data flow: 0 attention norm, 1 q/k/v, 2 o, 3 MLP norm, 4 gate/up, 5 down.
_POSITION = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 4, "up": 4, "down": 5}


@dataclass(frozen=True)
class FineTune:
    method: str = "full"
    rank: int = 8
    modules: tuple[str, ...] = DEFAULT_LORA_MODULES
    soft_tokens: int = 20

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PlannerError(f"--finetune: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.method in ("lora", "qlora"):
            if not isinstance(self.rank, int) or not 1 <= self.rank <= 65536:
                raise PlannerError(f"--lora-rank: {self.rank!r} must be an integer in [1, 65536]")
            unknown = [m for m in self.modules if m not in MODULES]
            if unknown or not self.modules:
                raise PlannerError(f"--lora-modules: {', '.join(unknown) or 'none given'}; use some of "
                                   f"{', '.join(MODULES)} (or {', '.join(ALIASES)})")
        if self.method == "prompt" and (not isinstance(self.soft_tokens, int) or not 1 <= self.soft_tokens <= 65536):
            raise PlannerError(f"--soft-tokens: {self.soft_tokens!r} must be an integer in [1, 65536]")

    @property
    def adapters(self) -> bool:
        return self.method in ("lora", "qlora")


def parse_modules(text: str) -> tuple[str, ...]:
    """`q,v` or `q_proj,v_proj` -> ('q', 'v')."""
    return tuple(ALIASES.get(m.strip(), m.strip()) for m in text.split(",") if m.strip())


def linear_dims(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each matrix in a layer."""
    h, q, kv, f = shape.hidden, shape.q_dim, shape.n_kv_heads * shape.head_dim, shape.ffn
    return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, f), "up": (h, f), "down": (f, h)}


def _check_shape(shape: ModelShape, ft: FineTune) -> None:
    if ft.method != "full" and shape.mlp != "swiglu":
        raise PlannerError("--finetune: adapter and prompt memory is modelled for LLaMA-style (SwiGLU) shapes")


def trainable_params(shape: ModelShape, ft: FineTune) -> int:
    if ft.method == "full":
        return shape.param_count()
    _check_shape(shape, ft)
    if ft.method == "prompt":
        return ft.soft_tokens * shape.hidden
    dims = linear_dims(shape)
    return shape.layers * sum(ft.rank * (dims[m][0] + dims[m][1]) for m in ft.modules)


def base_weight_bytes(shape: ModelShape, ft: FineTune) -> float:
    """The frozen base: 16-bit, or NF4 with double quantisation for the layers' matrices (QLoRA)."""
    if ft.method != "qlora":
        return 2.0 * shape.param_count()
    matrices = shape.layers * sum(i * o for i, o in linear_dims(shape).values())
    return NF4_DQ_BYTES * matrices + 2.0 * (shape.param_count() - matrices)


def state_lines(shape: ModelShape, ft: FineTune) -> dict[str, float]:
    """Model states per replica (frozen base + fp32 trainable states)."""
    trainable = trainable_params(shape, ft)
    return {"weights": base_weight_bytes(shape, ft) + FP32 * trainable, "gradients": FP32 * trainable,
            "master_weights": 0.0, "optimizer": 2 * FP32 * trainable}


def _layer_terms(shape: ModelShape, ft: FineTune, first_layer: bool) -> float:
    """Bytes per token one layer keeps (module docstring). A gradient flows through every layer from its
    input, except the first layer of an adapter method, where it starts at the first adapted module."""
    h, q, f, heads, a = shape.hidden, shape.q_dim, shape.ffn, shape.heads, 2
    kv = shape.n_kv_heads * shape.head_dim
    dims = linear_dims(shape)
    adapted = set(ft.modules) if ft.adapters else set()
    start = min(_POSITION[m] for m in adapted) if (first_layer and adapted) else 0
    norm = a * h + FP32
    total = sum(FP32 * dims[m][0] + FP32 * ft.rank for m in adapted)  # each adapter's fp32 input and A output
    if start == 0:
        total += norm  # attention norm
    if start <= 1:
        total += a * (2 * q + 2 * kv) + FP32 * heads  # SDPA: q, k, v, output, log-sum-exp
    if start <= 2:
        total += norm  # MLP norm
    if start <= 2:
        total += 2 * a * f  # SwiGLU: gate and up outputs
    elif start == 4:  # SwiGLU is where the gradient starts: it keeps gate and up as soon as either is trained
        total += 2 * a * f
    return total


def activation_bytes(shape: ModelShape, ft: FineTune, micro_batch: int, checkpointing: str = "none") -> float:
    """Saved tensors of all layers and the output layer for one micro-batch. With full checkpointing
    (what the QLoRA paper trains with) each layer keeps only its 16-bit input; `recompute_bytes`
    is the layer being recomputed in backward."""
    _check_shape(shape, ft)
    tokens = micro_batch * (shape.seq_len + (ft.soft_tokens if ft.method == "prompt" else 0))
    if checkpointing == "full":
        layers = shape.layers * 2 * shape.hidden
    else:
        layers = _layer_terms(shape, ft, True) + (shape.layers - 1) * _layer_terms(shape, ft, False)
    head = 2 * shape.hidden + FP32 + FP32 * shape.vocab
    return (layers + head) * tokens


def recompute_bytes(shape: ModelShape, ft: FineTune, micro_batch: int, checkpointing: str = "none") -> float:
    if checkpointing != "full":
        return 0.0
    tokens = micro_batch * (shape.seq_len + (ft.soft_tokens if ft.method == "prompt" else 0))
    return _layer_terms(shape, ft, False) * tokens
