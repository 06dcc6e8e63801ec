"""Step time of a layout (TP x PP x DP, ZeRO / FSDP, checkpointing), from the hardware's specs.

It reads the planner's own types: the model's `ModelShape` and the layout's `ParallelPlan`. Torch-free and
closed-form (microseconds per layout), so `compare --search` can rank thousands of layouts.

One optimizer step, per GPU (Narayanan et al. 2021, SC21, §3 and §5, for the Megatron terms):

- **Matmuls.** Every layer matmul, 2 FLOPs per parameter per token per pass (forward, backward twice, plus the
  recomputed forward under full checkpointing), and the output layer; at `achievable x eff(k)`, where
  `achievable` is the GPU's published maximum achievable matmul rate (`planner.model.hardware`) and `k = h / t` is
  the narrowest dimension of a rank's GEMM: `eff(k) = e_max k / (k + k_half)`. A pipeline runs at its slowest
  stage's pace: the last, which holds the output layer and the loss besides its share of the layers.
- **Attention.** Scores and values, 4 s h FLOPs per token per layer per pass. As one flash kernel (Dao et al.
  2022) the causal half is skipped (a decoder's; an encoder attends both ways) and the head dimension padded to the kernel's next multiple of 32
  (FlashAttention-2 builds kernels for 32, 64, ..., 256), its backward recomputing the scores (five GEMMs to the
  forward's two), at a fitted fraction of FlashAttention-2's published rate on the GPU; without it the scores are
  ordinary matmuls over the whole (masked) square, and the softmax and dropout read and write every score
  (`memory_bound_bytes`).
- **Memory-bound work** (norms, residual adds, activation functions, RoPE, the unfused softmax, the loss) from
  the bytes it moves, at a fitted fraction of HBM bandwidth (`memory_bound_bytes`: one read and one write per
  fused op, or, run as eager PyTorch composes them, our own block's bytes as counted op by op).
- **Tensor-parallel all-reduces.** Per layer and micro-batch, Megatron's f/g operators: 2 forward, their 2
  conjugates backward, and 2 again for a forward that full checkpointing recomputes (under the op policy the two
  all-gathers only, half of each pair: it keeps the reduce-scatters' outputs); each of the `b s h`
  activations in 2-byte precision, as a ring over NVLink; not overlapped.
- **Pipeline.** The slowest rank's compute and TP time, plus the schedule's fill and drain through the other
  ranks at their pace, the middle ones' without the head and the loss (`planner.memory.pipeline.bubble_seconds`:
  the bubble fraction of their time), and each micro-batch's activations and gradients sent over
  the network (`v` times with interleaving).
- **Data parallelism.** Each engine's traffic (`data_parallel_traffic`: DDP and DeepSpeed ZeRO 1-2 all-reduce
  the gradients, ZeRO 1-2 then all-gather the parameters; FSDP and ZeRO-3 reduce-scatter and all-gather) as a
  ring, each collective at its own achieved bus bandwidth where measured (gloo's); over NVLink inside a node;
  across nodes the ring crosses each node once per channel, one NIC per channel, so a group with `g` members
  per node moves its bytes at `min(NVLink, g x NIC)` (NCCL's rings over a DGX's 8 NICs); once a step, or on
  every micro-batch where the engine has no `no_sync` (Composer's FSDP, our trainer), with the memory-bound
  work the engine does on the whole gradient before each reduction (FSDP1: the cast to the fp32 reduce dtype
  and the pre-divide); overlapped with the backward where the engine overlaps it: what outlasts it is
  exposed, and a fitted share (`overlap`) of what it hides still costs, since the collectives' kernels take
  SMs and HBM bandwidth from the compute they overlap.
- **Optimizer step**: memory-bound, the optimizer's bytes per parameter (a fused Adam 32, torch's AdamW op by
  op with clipping 96) of the rank's ZeRO / FSDP shard, or of the whole rank under DDP.
- **Mixture of experts.** Each token's matmuls are its active ones (router, top-k routed experts, shared
  experts); the routed experts' run at the busiest expert's load (`MoE.load_factor`: the capacity factor's
  padded buffers, or the dropless margin), since every rank waits for the slowest at the next all-to-all. The
  MLP's element-wise work runs over the active width, plus the permutation (dispatch copies each token's h to
  its k slots, the combine reads them back). Expert parallelism adds, per MoE layer and micro-batch, an
  all-to-all dispatch and combine forward and again backward (and once more for a recomputed forward under
  full checkpointing), each moving tokens x top_k x h x bytes x load of which (ep - 1)/ep leaves the rank:
  over NVLink while the EP group (ep x tp ranks) sits in one node, else over each GPU's own NIC; not
  overlapped (the next layer needs the combined tokens). The routed experts' gradients are reduced over the
  `dp_shard / ep` ranks that hold the same experts, everything else's over all of them.

Six constants (matmul `e_max`, `k_half`, achieved link fraction, flash attention's fraction of its published
rate, achieved HBM fraction, the cost of overlapped communication) are shared by every row and every GPU; they
are fitted on the calibration tables the README names and judged on others (`benchmarks/bench_step_time.py`); no
row has its own. What differs between GPUs besides the data sheets is what their kernels reach, each a published
measurement in the catalog: an A100 reaches 87% of its peak in a large GEMM and FlashAttention-2 61% of it, an
H100 80% and 33%, which no single fraction of peak carries (fitted that way, llm-foundry's A100 table, never
fitted, came out 39% slow on average; with the published rates, 8.7%). What differs between runs is how each
ran (`Kernels`: its kernels, optimizer and engine), read from its published configuration.

This prices a stack of one kind of block (a decoder's, an encoder's); our encoder-decoder's two stacks are priced
by `planner.compute.encoder_decoder_step_time` with these constants and the layout terms below
(`data_parallel_time`, `optimizer_time`).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.compute.flops import recomputed_matmul_params
from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan
from planner.memory.pipeline import bubble_seconds, p2p_elements
from planner.model.hardware import BUILTIN_GPUS, GPU, achievable_tflops
from planner.model.shapes import ModelShape


@dataclass(frozen=True)
class Hardware:
    """What the step time needs of a machine: dense peak, HBM, NVLink and network per GPU."""

    peak_flops: float  # dense, in the compute dtype
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float  # per GPU, one direction
    network_bytes_per_s: float  # per GPU, one direction (the node's NICs shared by its GPUs)
    gpus_per_node: int
    fp8_peak_flops: float = 0.0  # dense fp8 (0: no fp8 tensor cores)
    attention_flops: float = 0.0  # achieved attention FLOP/s where measured (`planner probe`); 0: a fraction of peak
    # all-gather and reduce-scatter bus bandwidth as a fraction of the all-reduce's: 1 for NCCL; gloo's run at a
    # quarter to a third of its all-reduce (`planner probe` measures it)
    shard_collective_fraction: float = 1.0
    # an all-gather's alone (DeepSpeed ZeRO 1-2's parameter gather), as a fraction of the all-reduce's: 1 for NCCL;
    # `planner probe` measures gloo's
    all_gather_fraction: float = 1.0
    matmul_flops: float = 0.0  # what a large GEMM achieves (the catalog's `matmul_tflops`); 0: the peak
    fp8_matmul_flops: float = 0.0  # the same in fp8; 0: the fp8 peak
    flash_attention_flops: float = 0.0  # FlashAttention-2's published forward + backward rate; 0: the peak

    @property
    def matmul_ceiling(self) -> float:
        """What a large GEMM reaches in the compute dtype: the published rate, or the peak without one."""
        return self.matmul_flops or self.peak_flops


def hardware_of(gpu: GPU, dtype: str, gpus_per_node: int) -> Hardware:
    """The step time's view of a catalog GPU (`planner.model.hardware`, each figure from its data
    sheet): NVLink one way is half the catalog's both-directions figure. A collective's own bus bandwidth where
    the catalog has it (`planner probe`'s gloo figures) is a fraction of the all-reduce's (`network_gbps`);
    an all-gather without its own figure runs at the gather / scatter pair's."""
    if gpu.hbm_gbps <= 0:
        raise PlannerError(f"--gpu: {gpu.name} has no hbm_gbps in the catalog; set it to predict step time")
    if gpu.interconnect_gbps <= 0 and gpus_per_node > 1:  # collectives inside a node would divide by it
        raise PlannerError(f"--gpu: {gpu.name} has no interconnect_gbps in the catalog (the link between the "
                           f"{gpus_per_node} GPUs of a node); set it to predict step time")
    shard = _fraction_of_all_reduce(gpu.shard_collectives_gbps, gpu.network_gbps)
    gather = _fraction_of_all_reduce(gpu.all_gather_gbps, gpu.network_gbps) if gpu.all_gather_gbps else shard
    peak = gpu.peak_flops(dtype)
    # a probed machine's peak is already its GEMM's achieved rate, its attention measured on its own
    fp8 = gpu.peak_tflops.get("fp8", 0.0) * 1e12
    matmul, flash, fp8_matmul = (peak, 0.0, fp8) if gpu.device == "cpu" else (
        achievable_tflops(gpu, "matmul_tflops", dtype) * 1e12,
        achievable_tflops(gpu, "flash_attention_tflops", dtype) * 1e12,
        achievable_tflops(gpu, "matmul_tflops", "fp8") * 1e12 if fp8 else 0.0)
    return Hardware(peak, gpu.hbm_gbps * 1e9, gpu.interconnect_gbps / 2 * 1e9, gpu.network_gbps * 1e9, gpus_per_node,
                    fp8, gpu.attention_tflops.get(dtype, 0.0) * 1e12, shard, gather, matmul_flops=matmul,
                    fp8_matmul_flops=fp8_matmul, flash_attention_flops=flash)


def _fraction_of_all_reduce(gbps: float, all_reduce_gbps: float) -> float:
    """A collective's bus bandwidth over the all-reduce's; 1 where either is not in the catalog."""
    return gbps / all_reduce_gbps if gbps and all_reduce_gbps else 1.0


#: A100 SXM 80GB in a DGX A100 (Selene, where Megatron's tables were measured): 312 TFLOP/s bf16,
#: 2,039 GB/s HBM, 300 GB/s NVLink each way, one 200 Gb/s HDR NIC per GPU.
A100_80GB_DGX = hardware_of(BUILTIN_GPUS["a100-80gb"], "bf16", 8)


@dataclass(frozen=True)
class Efficiency:
    """The model's fitted constants (see the module docstring)."""

    matmul_max: float = 0.8  # the fraction of the GPU's achievable GEMM rate (`Hardware.matmul_flops`) layers reach
    matmul_half_k: float = 256.0  # the per-rank width at which a GEMM reaches half of matmul_max
    link: float = 0.7  # the fraction of a link's bandwidth a collective achieves
    # the fraction of FlashAttention-2's published rate on the GPU (`Hardware.flash_attention_flops`) a training
    # run's attention reaches (its executed FLOPs)
    attention: float = 0.4
    memory: float = 0.8  # the fraction of HBM bandwidth memory-bound kernels reach
    # the share of overlapped data-parallel communication time that still costs: NCCL's kernels take SMs and HBM
    # bandwidth from the compute they overlap (0: hidden for free, 1: as if serial)
    overlap: float = 0.0


@dataclass(frozen=True)
class Kernels:
    """How a run executes what is not a matmul: attention as one flash kernel or not; element-wise ops fused
    (one read and one write each) or as eager PyTorch composes them; the residual stream's width in bytes
    (fp32 under autocast over fp32 weights, else 16-bit); the optimizer's HBM bytes per parameter it steps (of
    the rank's ZeRO / FSDP shard where the states are sharded); whether the engine reduces gradients (and FSDP
    gathers parameters) on every micro-batch or once a step, and the memory-bound work each reduction does on
    the rank's whole gradient before its collective; the attention's own copies around its kernel."""

    flash_attention: bool = False
    fused: bool = True
    residual_bytes: int = 2
    fp8_linears: bool = False  # torchao Float8 training: the blocks' linears that pass `fp8_linear` in fp8
    activation_bytes: int = 2  # 4 when the whole model runs in fp32
    # a fused Adam: fp32 parameter, gradient and both moments read, the three written, a 16-bit copy written
    optimizer_bytes: float = 32.0
    reduce_every_micro_batch: bool = False  # no `no_sync`: every micro-batch's backward reduces (FSDP: gathers)
    reduce_prep_bytes: float = 0.0  # per parameter of the rank, per reduction (e.g. FSDP1's fp32 cast + divide)
    # bytes per token per layer, x h at 16-bit, forward and backward, that the attention's wrapper copies
    attention_copies: tuple[float, float] = (0.0, 0.0)


#: Megatron-LM 2021: fused softmax, bias-GeLU and bias-dropout-add kernels, no flash attention, fp16 stream.
MEGATRON_2021 = Kernels(flash_attention=False, fused=True, residual_bytes=2)
#: torch's AdamW, foreach or one tensor at a time (torchtitan, our trainer, Composer's DecoupledAdamW), op by op
#: on fp32 elements: the moments' lerp / mul + add (20), the second moment's mul + addcmul (24), sqrt, the bias
#: correction's divide and + eps (24), the parameter's addcdiv (16); and the gradient clipping before it (the
#: norm reads the gradient, the scale reads and writes it: 12). 96 bytes per parameter stepped.
UNFUSED_ADAMW_BYTES = 96.0
#: llm-foundry's MPT as its H100 benchmarks ran it (`scripts/train/benchmarking/submit_benchmarks.py`, the MPT
#: yamls, Composer's FSDP1): one kernel per element-wise op (LayerNorm in bf16, `low_precision_layernorm`;
#: GeLU; residual adds) on a bf16 stream (FSDP's `DEFAULT` mixed precision gathers bf16 parameters), flash
#: attention 2 behind MPT's unpad / pad copies (q, k and v gathered by `index_first_axis`, the output scattered
#: into zeros by `pad_input`: 18 h bytes forward, 22 h backward), Composer's DecoupledAdamW with gradient
#: clipping; FSDP1 FULL_SHARD without `no_sync` (Composer's `ddp_sync_context` leaves a model that is not torch
#: DDP alone, so every micro-batch reduces), each backward casting the layer's bf16 gradient to the fp32 reduce
#: dtype (6 bytes a parameter) and pre-dividing it (8, `_div_if_needed` in FSDP1's `_reduce_grad`) before the
#: reduce-scatter.
LLM_FOUNDRY = Kernels(flash_attention=True, fused=True, residual_bytes=2, optimizer_bytes=UNFUSED_ADAMW_BYTES,
                      reduce_every_micro_batch=True, reduce_prep_bytes=14.0, attention_copies=(18.0, 22.0))
#: Our trainer under FSDP2 (and torchtitan without torch.compile): eager PyTorch ops, bf16 stream, SDPA flash,
#: torch's AdamW and clipping.
EAGER_TORCH = Kernels(flash_attention=True, fused=False, residual_bytes=2, optimizer_bytes=UNFUSED_ADAMW_BYTES)
#: torchtitan with torch.compile: element-wise chains fused, bf16 stream, SDPA flash.
COMPILED_TORCH = Kernels(flash_attention=True, fused=True, residual_bytes=2, optimizer_bytes=UNFUSED_ADAMW_BYTES)


@dataclass(frozen=True)
class StepTime:
    matmul_s: float
    attention_s: float
    memory_s: float  # memory-bound kernels
    tp_comm_s: float
    bubble_s: float
    pp_comm_s: float
    dp_comm_s: float
    optimizer_s: float
    model_flops: float  # per iteration, all GPUs, with recomputation (the paper's counting)
    ep_comm_s: float = 0.0  # expert-parallel all-to-alls (MoE)
    dp_bytes: float = 0.0  # what each GPU sends on its data-parallel collectives per step, as priced

    @property
    def compute_s(self) -> float:
        return self.matmul_s + self.attention_s + self.memory_s

    @property
    def total_s(self) -> float:
        return (self.compute_s + self.tp_comm_s + self.ep_comm_s + self.bubble_s + self.pp_comm_s + self.dp_comm_s
                + self.optimizer_s)


def megatron_flops(shape: ModelShape, batch: int) -> float:
    """Narayanan et al. 2021, eq. 3: FLOPs of one iteration of `batch` sequences with full activation
    recomputation (GPT blocks: 12 h^2 parameters per layer)."""
    s, layers, h, v = shape.seq_len, shape.layers, shape.hidden, shape.vocab
    return 96 * batch * s * layers * h * h * (1 + s / (6 * h) + v / (16 * layers * h))


def ring_time(nbytes: float, ranks: int, bandwidth: float) -> float:
    """A ring all-reduce of `nbytes` over `ranks`: each rank sends and receives 2 (n - 1) / n of it."""
    return 0.0 if ranks <= 1 else 2 * (ranks - 1) / ranks * nbytes / bandwidth


#: Fitted by `benchmarks/bench_step_time.py` on the two calibration tables the README names (Narayanan et al.
#: 2021, Table 1; llm-foundry's MPT on H100, BF16) and nothing else; the estimate uses these
#: (`tests/test_step_time.py` re-fits and holds them equal).
CALIBRATED = Efficiency(matmul_max=0.9069, matmul_half_k=401.82, link=0.6205, attention=0.5507, memory=0.5591,
                        overlap=0.3110)
#: A machine measured by `planner probe` (a catalog entry with `device: cpu`): its figures are achieved rates (a
#: GEMM, a copy, a gloo all-reduce), so every fraction is one and the width term is off.
PROBED = Efficiency(matmul_max=1.0, matmul_half_k=0.0, link=1.0, attention=1.0, memory=1.0, overlap=0.0)
#: Forward-equivalent passes of attention per step on a checkpointed layer: forward + backward (2x), plus the
#: recomputed forward under full checkpointing (selective recomputes only the softmax side, memory-bound; op
#: keeps SDPA's output). The layer matmuls' passes are `matmul_passes`.
ATTENTION_PASSES = {"none": 3, "selective": 3, "op": 3, "full": 4}
#: Forward-equivalent passes of the memory-bound ops: every checkpointing recomputes them.
MEMORY_PASSES = {"none": 1, "selective": 2, "op": 2, "full": 2}


def matmul_passes(shape: ModelShape, checkpointing: str, checkpointed_fraction: float = 1.0) -> float:
    """Forward-equivalent passes of the layer matmuls, averaged over the weights and the layers: 3, plus the
    recomputed forward of the weights checkpointing recomputes (`recomputed_matmul_params`) on the fraction of
    the layers it checkpoints."""
    recomputed = recomputed_matmul_params(shape, checkpointing) / shape.active_matmul_params()
    return 3 + checkpointed_fraction * recomputed


def layer_flops(shape: ModelShape, batch: int, passes: float) -> float:
    """FLOPs of `batch` sequences: every layer's matmuls (2 per parameter per token per pass, plus the
    4 s h of attention's scores and values, as Megatron counts it) `passes` times, and the output layer
    forward and backward. Equals `megatron_flops` for GPT blocks with full recomputation."""
    s, h = shape.seq_len, shape.hidden
    per_token_layer = 2 * shape.active_matmul_params() + 4 * s * h
    return batch * s * (shape.layers * per_token_layer * passes + 6 * shape.vocab * h)


#: Our block (RMSNorm, RoPE, SwiGLU, GQA) as eager PyTorch runs it, bytes per token per layer, (forward,
#: backward), each a x h + b x (kv heads x head dim) + c x ffn, by activation width (2: bf16, 4: fp32): least
#: squares over the bytes every non-matmul aten op of `pretrain.model.Block` reads and writes, counted op by op
#: (`pretrain.memory_probe.MemoryTrafficCounter`) at seven shapes (`benchmarks/count_eager_block.py`: worst
#: residual 0.7%; `tests/test_step_time.py` counts them again). In bf16 the norms alone move ~30 bytes per
#: element (fp32 upcast, square, mean, scale, cast back, weight) and RoPE ~56 per element of q and k (fp32
#: halves rotated and stacked), where one fused kernel moves 4.
EAGER_BLOCK = {2: ((145.7, 47.8, 9.7), (279.8, 55.8, 21.7)),
               4: ((125.7, 35.8, 19.7), (269.8, 47.8, 43.7))}


def memory_bound_bytes(shape: ModelShape, kernels: Kernels, checkpointing: str = "none",
                       checkpointed_fraction: float = 1.0) -> float:
    """Bytes the memory-bound work of one layer moves per token over a step (forward, backward, and the
    recomputed forward where checkpointing recomputes it). Fused: a norm reads the stream and writes 16-bit
    (under autocast it runs in fp32 and is cast), a residual add reads the stream and the branch and writes
    the stream, the MLP's activation reads its inputs and writes its output, RoPE reads and writes q and k,
    and a backward moves twice its forward. Without flash attention every score goes through memory: the fused
    scale-mask-softmax reads the scores and writes the probabilities, the dropout reads them and writes them and
    its one-byte mask (4 w + 1 bytes a score forward); backward, the dropout's gradient reads the gradient and
    the mask and writes it, the softmax's reads it and the probabilities and writes it (5 w + 1). The
    attention's own copies around its kernel (`Kernels.attention_copies`) as counted. Eager PyTorch, for our
    block's shape: `EAGER_BLOCK`, counted."""
    w = kernels.activation_bytes
    h, f, kv = shape.hidden, shape.active_ffn(), shape.n_kv_heads * shape.head_dim
    llama = shape.norm == "rmsnorm" and shape.mlp == "swiglu" and shape.position == "rope"
    recomputed = 1 + checkpointed_fraction * (MEMORY_PASSES[checkpointing] - 1)
    if not kernels.fused and llama:
        fwd, bwd = (a * h + b * kv + c * f for a, b, c in EAGER_BLOCK[kernels.activation_bytes])
        return recomputed * fwd + bwd
    r = kernels.residual_bytes
    autocast = r > w  # an fp32 stream under 16-bit compute: the norm runs in fp32, then a cast
    norm = (r + 4 + 4 + w) if autocast else (r + w)
    fwd = 2 * norm * h + 2 * (2 * r + w) * h + (3 if shape.mlp == "swiglu" else 2) * w * f
    if shape.position == "rope":
        fwd += 2 * w * (shape.q_dim + kv)
    fwd += moe_routing_bytes(shape, w)
    extra_fwd, extra_bwd = (c * w / 2 * h for c in kernels.attention_copies)
    if not kernels.flash_attention:
        scores = shape.heads * shape.seq_len
        extra_fwd, extra_bwd = extra_fwd + (4 * w + 1) * scores, extra_bwd + (5 * w + 1) * scores
    return recomputed * (fwd + extra_fwd) + 2 * fwd + extra_bwd


def moe_routing_bytes(shape: ModelShape, width: int) -> float:
    """Per token per layer (averaged over the layers), the forward's memory-bound routing work of an MoE layer:
    the router's fp32 softmax and top-k over E (read and write, 8 E), the dispatch's permutation (read h, write
    k h at the load factor) and the combine's (read k h, write h)."""
    m = shape.moe
    if m is None:
        return 0.0
    per_layer = 8 * m.experts + 2 * width * shape.hidden * (1 + m.top_k * m.load_factor)
    return per_layer * shape.moe_layers / shape.layers


def fp8_linear(in_features: int, out_features: int) -> bool:
    """Whether torchao's Float8 training runs a linear in fp8 (torchao/float8/float8_linear_utils.py,
    `_auto_filter_for_tensorwise`, the filter torchtitan applies): both dimensions multiples of 16 (the
    tensor cores' rule), and not a small one, out <= 4096 with in <= 1024, where the casts cost more than
    fp8 gains. torchtitan also keeps the output layer in bf16 (`filter_fqns = ["output"]`)."""
    return in_features % 16 == 0 and out_features % 16 == 0 and not (out_features <= 4096 and in_features <= 1024)


def block_linears(shape: ModelShape, tp: int = 1) -> list[tuple[int, int]]:
    """(in, out) of each linear of one block on a TP rank (column-parallel split out, row-parallel in)."""
    h, f, q, kv = shape.hidden, shape.ffn, shape.q_dim, shape.n_kv_heads * shape.head_dim
    mlp = [(h, f // tp), (h, f // tp), (f // tp, h)] if shape.mlp == "swiglu" else [(h, f // tp), (f // tp, h)]
    return [(h, q // tp), (h, kv // tp), (h, kv // tp), (q // tp, h), *mlp]


def fp8_cast_bytes(shape: ModelShape, tp: int = 1) -> float:
    """Bytes per token per layer over a step that Float8 training adds: each fp8 linear casts its input
    (read bf16, write fp8, and the amax read: 5 bytes an element) forward, its output gradient the same way
    backward, and both again transposed for the weight gradient (1 read, 1 write): 7 (in + out)."""
    converted = [fp8_linear(i, o) for i, o in block_linears(shape)]  # torchao converts before TP splits
    return sum(7 * (i + o) for (i, o), fp8 in zip(block_linears(shape, tp), converted, strict=True) if fp8)


def flash_padded_head_dim(head_dim: int) -> int:
    """FlashAttention-2 runs a head dimension in the next kernel it has: a multiple of 32 (112 runs as 128)."""
    return -(-head_dim // 32) * 32


def all_reduces_gradients(plan: ParallelPlan) -> bool:
    """Whether the engine all-reduces the whole gradient: DDP, and DeepSpeed's ZeRO 1-2. DeepSpeed (0.19.8,
    `deepspeed/runtime/zero/stage_1_and_2.py`, `average_tensor`) groups a gradient bucket's slices by owner rank,
    but with `use_multi_rank_bucket_allreduce` (on by default; our ds_config leaves it) every slice goes to one
    `allreduce_and_scatter`: the bucket is flattened, all-reduced whole (`allreduce_bucket`, `dist.all_reduce`),
    and each rank keeps its own partition's slices. Traced in our trainer (2 ranks, fp32, 17.8M parameters): one
    71.3 MB `all_reduce` and one 35.7 -> 71.3 MB `all_gather_into_tensor` a step, no reduce or reduce-scatter.
    ZeRO-3 and FSDP reduce-scatter."""
    return plan.stage == 0 or (plan.engine == "deepspeed" and plan.stage in (1, 2))


def data_parallel_traffic(plan: ParallelPlan, rank_params: float, grad_bytes: int, param_bytes: int = 2,
                          ranks: int | None = None) -> tuple[float, float, float]:
    """Bytes each data-parallel rank sends per step (all-reduce as a ring counts 2 (n-1)/n of its input), by the
    collective that sends them: (all-reduced, reduce-scattered and all-gathered as a pair, all-gathered alone).
    DDP all-reduces the gradients; DeepSpeed ZeRO 1-2 all-reduce them too (`all_reduces_gradients`) and
    all-gather the updated parameters (16-bit, or fp32 in an fp32 run); FSDP shard-grad-op reduce-scatters them
    and all-gathers the parameters; ZeRO-3 / FSDP full also all-gather the parameters again for backward.
    `ranks`: the group, where not the plan's (the routed experts' is smaller by ep)."""
    n = ranks or (plan.shard_degree if plan.stage else plan.dp)
    if n <= 1:
        return 0.0, 0.0, 0.0
    half = (n - 1) / n * rank_params  # one reduce-scatter or all-gather of the rank's parameters, in elements
    if plan.stage == 0:
        return 2 * half * grad_bytes, 0.0, 0.0
    if all_reduces_gradients(plan):
        return 2 * half * grad_bytes, 0.0, half * param_bytes
    gathers = 2 if plan.stage == 3 else 1
    return 0.0, half * grad_bytes + gathers * half * param_bytes, 0.0


def data_parallel_seconds(traffic: tuple[float, float, float], hw: Hardware, bandwidth: float) -> float:
    """Seconds of `data_parallel_traffic` on a ring of all-reduce `bandwidth`: a gather / scatter pair and a lone
    all-gather at their own fractions of it (1 on NCCL; gloo's, measured by `planner probe`, are lower)."""
    all_reduced, paired, gathered = traffic
    return (all_reduced + paired / hw.shard_collective_fraction + gathered / hw.all_gather_fraction) / bandwidth


def data_parallel_bandwidth(plan: ParallelPlan, hw: Hardware, link: float) -> float:
    """A data-parallel group's ring bandwidth per GPU: NVLink inside a node; across nodes, the ring crosses each
    node once per channel with one NIC per channel, so the group's members on a node (`per node / tp`) share
    their NICs: `min(NVLink, members x NIC)`."""
    ranks = plan.shard_degree if plan.stage else plan.dp
    if ranks * plan.tp <= hw.gpus_per_node:
        return hw.nvlink_bytes_per_s * link
    members = max(1, hw.gpus_per_node // plan.tp)
    return min(hw.nvlink_bytes_per_s, members * hw.network_bytes_per_s) * link


def expert_parallel_time(shape: ModelShape, plan: ParallelPlan, hw: Hardware, link: float, width: int,
                         checkpointing: str, checkpointed_fraction: float) -> float:
    """Seconds per step of the MoE layers' all-to-alls on one rank (see the module docstring): dispatch and
    combine, forward and backward, and the recomputed forward's under full checkpointing."""
    m = shape.moe
    if m is None or plan.ep <= 1:
        return 0.0
    per_a2a = plan.micro_batch * shape.seq_len * m.top_k * shape.hidden * width * m.load_factor \
        * (plan.ep - 1) / plan.ep
    in_node = plan.ep * plan.tp <= hw.gpus_per_node
    bandwidth = (hw.nvlink_bytes_per_s if in_node else hw.network_bytes_per_s) * link
    passes = 4 + (2 * checkpointed_fraction if checkpointing == "full" else 0)
    return passes * (shape.moe_layers / plan.pp) * plan.grad_accum * per_a2a / bandwidth


def matmul_rate(hw: Hardware, eff: Efficiency, width: float) -> float:
    """FLOP/s of a layer's GEMMs whose narrowest dimension on a rank is `width` (h / tp): the GPU's achievable
    rate at `eff(k) = e_max k / (k + k_half)` (module docstring)."""
    return hw.matmul_ceiling * eff.matmul_max * width / (width + eff.matmul_half_k)


def flash_attention_seconds(executed_flops: float, head_dim: int, passes: float, hw: Hardware,
                            eff: Efficiency) -> float:
    """Seconds of `executed_flops` of attention (the scores it computes, over `passes` forward-equivalent passes)
    as one flash kernel: the head dimension padded to the kernel's; its backward recomputing the scores (Dao
    2023, FlashAttention-2, Alg. 2: five GEMMs to the forward's two, so half a forward more than the two the
    attention's FLOP count gives a backward); at the fitted fraction of FlashAttention-2's published rate. A rate
    `planner probe` measured is already per counted pass (it times SDPA's forward and backward against 3)."""
    pad = flash_padded_head_dim(head_dim) / head_dim
    if hw.attention_flops:
        return executed_flops * pad / hw.attention_flops
    ceiling = hw.flash_attention_flops or hw.peak_flops
    return executed_flops * (passes + 0.5) / passes * pad / (ceiling * eff.attention)


def tensor_parallel_link(plan: ParallelPlan, hw: Hardware, eff: Efficiency) -> float:
    """A TP group's achieved bandwidth per GPU: NVLink inside a node, the network across nodes."""
    return (hw.nvlink_bytes_per_s if plan.tp <= hw.gpus_per_node else hw.network_bytes_per_s) * eff.link


def pipeline_p2p_time(shape: ModelShape, plan: ParallelPlan, hw: Hardware, eff: Efficiency, width: int) -> float:
    """Seconds per step of the stages' sends: each micro-batch's activations forward and gradients backward,
    `p2p_elements` each (`v` times with interleaving), over the network."""
    if plan.pp == 1:
        return 0.0
    elements = p2p_elements(shape, plan.micro_batch, plan.tp)
    return plan.grad_accum * plan.pp_virtual * 2 * width * elements / (hw.network_bytes_per_s * eff.link)


def data_parallel_time(shape: ModelShape, plan: ParallelPlan, hw: Hardware, eff: Efficiency, kernels: Kernels,
                       grad_bytes: int, compute: float, overlap_passes: float | None) -> tuple[float, float]:
    """(exposed seconds, bytes each GPU sends) of a step's data-parallel collectives (module docstring): the
    engine's traffic, the routed experts' over their own smaller group, hybrid sharding's all-reduce across
    copies; once a step, or every micro-batch where the engine reduces each. `compute`: the rank's compute
    seconds of the step; `overlap_passes`: its forward-equivalent passes, which the traffic hides behind (None:
    not overlapped)."""
    rank_params = shape.param_count() / (plan.tp * plan.pp)  # the embedding and an untied head both reduced
    reductions = plan.grad_accum if kernels.reduce_every_micro_batch else 1
    expert_params = shape.routed_expert_params() / (plan.tp * plan.pp)  # reduced within the ranks holding them
    traffic = data_parallel_traffic(plan, rank_params - expert_params, grad_bytes, kernels.activation_bytes)
    if expert_params:
        group = plan.expert_shard_degree if plan.stage else plan.dp // plan.ep
        experts = data_parallel_traffic(plan, expert_params / plan.ep, grad_bytes, kernels.activation_bytes, group)
        traffic = tuple(a + b for a, b in zip(traffic, experts, strict=True))
    dp_comm = data_parallel_seconds(traffic, hw, data_parallel_bandwidth(plan, hw, eff.link))
    dp_bytes = sum(traffic)
    if plan.engine == "fsdp" and plan.stage and plan.dp_replicate > 1:  # hybrid sharding: the shards' gradients all-reduced across copies
        shard_grads = grad_bytes * rank_params / plan.shard_degree
        dp_comm += ring_time(shard_grads, plan.dp_replicate, hw.network_bytes_per_s * eff.link)
        dp_bytes += 2 * (plan.dp_replicate - 1) / plan.dp_replicate * shard_grads
    dp_comm, dp_bytes = dp_comm * reductions, dp_bytes * reductions
    if overlap_passes is not None:
        # hidden behind the backward it overlaps (ZeRO-3 / FSDP full: the gathers behind the forward too): each
        # reduction's own micro-batch where every micro-batch reduces, else the last one's; of what is hidden,
        # `overlap` still costs (the collectives' kernels share the SMs and HBM with the compute)
        passes = overlap_passes
        behind = (passes - 1) / passes if plan.stage == 3 else (2 / passes) * reductions / plan.grad_accum
        hidden = min(dp_comm, compute * behind)
        dp_comm = dp_comm - hidden + eff.overlap * hidden
    return dp_comm, dp_bytes


def optimizer_time(shape: ModelShape, plan: ParallelPlan, hw: Hardware, eff: Efficiency, kernels: Kernels) -> float:
    """The optimizer step, memory-bound: its bytes per parameter over the states of the rank's shard under ZeRO /
    FSDP, of the whole rank under DDP."""
    rank_params = shape.param_count() / (plan.tp * plan.pp)
    return kernels.optimizer_bytes * rank_params / (plan.shard_degree if plan.stage else 1) \
        / (hw.hbm_bytes_per_s * eff.memory)


def step_time(shape: ModelShape, plan: ParallelPlan, hw: Hardware, eff: Efficiency = Efficiency(), *,
              checkpointing: str = "full", overlap_dp: bool = False, grad_bytes: int = 4,
              kernels: Kernels = MEGATRON_2021, checkpointed_fraction: float = 1.0) -> StepTime:
    """One optimizer step of `plan` (its world set; `grad_accum` micro-batches per pipeline).

    The defaults are Megatron-LM 2021's runs (full recomputation, its fused kernels, a data-parallel
    all-reduce of fp32 gradients after the backward); the planner's estimate passes the plan's
    checkpointing, our trainer's kernels (`EAGER_TORCH`), overlaps the data-parallel traffic with the
    backward as torch DDP, FSDP2 and DeepSpeed do and the engine's gradient width. `checkpointed_fraction`:
    the share of the layers checkpointing applies to (torchtitan's layer SAC checkpoints every k-th one)."""
    micro_batches = plan.grad_accum
    passes = matmul_passes(shape, checkpointing, checkpointed_fraction)
    attention_passes = 3 + checkpointed_fraction * (ATTENTION_PASSES[checkpointing] - 3)
    gpus = plan.tp * plan.pp * plan.dp
    tokens = plan.batch * shape.seq_len
    s, h = shape.seq_len, shape.hidden
    rate = matmul_rate(hw, eff, h / plan.tp)
    matmul_params = shape.active_matmul_params()
    if shape.moe is not None:  # the busiest expert's tokens set the pace (its capacity, or the dropless margin)
        m = shape.moe
        matmul_params += (m.load_factor - 1) * m.top_k * shape.expert_params() * shape.moe_layers / shape.layers
        # TP for attention only: every TP rank runs the whole MoE layer (router, its top-k experts, shared ones)
        moe_active = m.load_factor * m.top_k * shape.expert_params() + shape.moe_mlp_params(0)
        matmul_params += (plan.tp - 1) * moe_active * shape.moe_layers / shape.layers
        if kernels.fp8_linears:
            raise PlannerError("--precision fp8: planned for dense blocks; Float8 MoE experts are not modelled")
    fp8_params = sum(i * o for i, o in block_linears(shape) if fp8_linear(i, o)) if kernels.fp8_linears else 0
    if fp8_params and hw.fp8_peak_flops <= 0:
        raise PlannerError("--precision fp8: this GPU has no fp8 peak in the catalog")
    fp8_rate = rate * (hw.fp8_matmul_flops or hw.fp8_peak_flops) / hw.matmul_ceiling if fp8_params else rate
    layer_seconds = 2 * passes * ((matmul_params - fp8_params) / rate + fp8_params / fp8_rate)  # per token
    # a pipeline runs at its slowest stage's pace: the last holds the output layer and the loss besides its layers
    last_rank_only = tokens * plan.pp * 6 * shape.vocab * h / rate / gpus
    matmul = tokens * shape.layers * layer_seconds / gpus + last_rank_only
    attention_flops = tokens * shape.layers * 4 * s * shape.heads * shape.head_dim * attention_passes / gpus
    if kernels.flash_attention:  # a decoder's causal half skipped (an encoder attends both ways: every score)
        skipped = 1 if shape.arch == "encoder" else 2
        attention = flash_attention_seconds(attention_flops / skipped, shape.head_dim, attention_passes, hw, eff)
    else:
        attention = attention_flops / rate
    loss_bytes = 16 * shape.vocab / plan.tp  # fp32 log-softmax and its gradient over the (TP-split) vocabulary
    per_layer = memory_bound_bytes(shape, kernels, checkpointing, checkpointed_fraction) / plan.tp
    if kernels.fp8_linears:
        per_layer += fp8_cast_bytes(shape, plan.tp)
    moved = tokens * (shape.layers * per_layer + plan.pp * loss_bytes)
    last_rank_only += tokens * plan.pp * loss_bytes / gpus / (hw.hbm_bytes_per_s * eff.memory)
    rank_params = shape.param_count() / (plan.tp * plan.pp)
    reductions = micro_batches if kernels.reduce_every_micro_batch else 1
    if plan.dp > 1:  # the engine's own work on the whole gradient before each reduction
        moved += kernels.reduce_prep_bytes * rank_params * reductions * gpus
    memory = moved / gpus / (hw.hbm_bytes_per_s * eff.memory)
    compute = matmul + attention + memory
    tp_link = tensor_parallel_link(plan, hw, eff)
    activation_bytes = kernels.activation_bytes * plan.micro_batch * s * h
    # two collectives a layer forward (after attention and after the MLP), their two conjugates backward, and the
    # forward's again where full checkpointing recomputes it; the op policy keeps the reduce-scatters' outputs
    # (torchtitan's save list) and recomputes the all-gathers before q/k/v and gate/up: half of each pair again
    tp_passes = 2 + checkpointed_fraction * {"full": 1.0, "op": 0.5}.get(checkpointing, 0.0)
    tp_comm = 2 * tp_passes * (shape.layers / plan.pp) * micro_batches * ring_time(activation_bytes, plan.tp, tp_link)
    bubble = bubble_seconds([compute - last_rank_only + tp_comm], plan)  # the other ranks: the middle ones' pace
    pp_comm = pipeline_p2p_time(shape, plan, hw, eff, kernels.activation_bytes)
    dp_comm, dp_bytes = data_parallel_time(shape, plan, hw, eff, kernels, grad_bytes, compute,
                                           passes if overlap_dp else None)
    optimizer = optimizer_time(shape, plan, hw, eff, kernels)
    ep_comm = expert_parallel_time(shape, plan, hw, eff.link, kernels.activation_bytes, checkpointing,
                                   checkpointed_fraction)
    return StepTime(matmul, attention, memory, tp_comm, bubble, pp_comm, dp_comm, optimizer,
                    layer_flops(shape, plan.batch, passes), ep_comm, dp_bytes)
