"""Accelerator catalog: dense peak throughput per dtype, memory, interconnect and a default price.

Peak figures are **dense** tensor-core TFLOP/s from the vendors' data sheets (NVIDIA V100, A100,
H100, H200, B200 and L40S data sheets; AMD Instinct MI300X data sheet). Vendors also print
"with sparsity" figures, exactly twice the dense ones: those are never used here, because MFU is
defined against dense peak (Chowdhery et al. 2022, PaLM, Appendix B).

Memory is the capacity `nvidia-smi` / `rocm-smi` reports, in GiB. Prices are indicative
on-demand cloud list prices per GPU-hour (late 2025); pass `--price` or a catalog file to use yours.

A user catalog is a YAML mapping of name -> fields (any subset, to override a built-in entry):

    my-h100:
      memory_gib: 80
      peak_tflops: {bf16: 989, fp16: 989, fp32: 67}
      price_per_hour: 2.10
      hbm_gbps: 3350          # memory bandwidth, GB/s
      interconnect_gbps: 900  # NVLink per GPU, GB/s both directions
      network_gbps: 50        # scale-out bandwidth per GPU, GB/s one way
      device: gpu             # or cpu: an entry `planner probe` measured (one trainer process per "GPU")
      matmul_tflops: {bf16: 794.5}            # a large GEMM's measured rate (maximum achievable matmul FLOP/s)
      flash_attention_tflops: {bf16: 326}     # FlashAttention-2 forward + backward, causal, head dim 128

What the step-time model needs beyond the data sheets is what the kernels reach on the GPU, each a published
measurement: the maximum achievable matmul FLOP/s (MAMF) and FlashAttention-2's forward + backward rate. A
GPU's share of peak differs by generation (an A100 reaches more of its peak than an H100 in both), which a
single fraction of peak cannot carry; a GPU without its own figure is taken to reach the built-in GPUs' mean
share of its peak (`typical_share`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from planner.core import checks
from planner.core.errors import PlannerError
from planner.core.io import read_input
from planner.core.schema import DEVICES, GPU_BANDWIDTH_FIELDS, GPU_RATE_FIELDS, rate_above_peak


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    peak_tflops: dict[str, float] = field(hash=False)  # dense, per dtype
    price_per_hour: float  # USD per GPU-hour
    interconnect_gbps: float = 0.0  # per-GPU intra-node bandwidth, GB/s, both directions (NVLink / Infinity Fabric)
    description: str = ""
    hbm_gbps: float = 0.0  # memory bandwidth, GB/s (data sheet)
    network_gbps: float = 0.0  # per-GPU scale-out bandwidth, GB/s one way, of the reference system (see below)
    device: str = "gpu"  # "cpu": a machine measured by `planner probe` (one trainer process per "GPU")
    # achieved causal-attention FLOP/s per dtype, as the step-time model counts them (`planner probe` measures
    # SDPA; empty for a GPU, whose flash attention runs at the calibrated fraction of peak)
    attention_tflops: dict[str, float] = field(default_factory=dict, hash=False)
    # the bus bandwidth of all-gather and reduce-scatter between the machine's processes, GB/s, where it is not
    # the all-reduce's (`planner probe` measures gloo's; 0: as network_gbps)
    shard_collectives_gbps: float = 0.0
    # the bus bandwidth of an all-gather alone, GB/s, where it is not the all-reduce's: DeepSpeed's ZeRO 1-2
    # gather the updated parameters after the step (`planner probe` measures gloo's; 0: as shard_collectives_gbps)
    all_gather_gbps: float = 0.0
    # what a large GEMM achieves on this GPU, per dtype, measured and published (the "maximum achievable matmul
    # FLOP/s"): the step time's matmuls run at a fitted fraction of it; empty: `typical_share` of peak
    matmul_tflops: dict[str, float] = field(default_factory=dict, hash=False)
    # FlashAttention-2's published forward + backward TFLOP/s on this GPU (causal, head dim 128, long sequences,
    # in its own FLOP count): flash attention runs at a fitted fraction of it; empty: `typical_share` of peak
    flash_attention_tflops: dict[str, float] = field(default_factory=dict, hash=False)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for a compute dtype ('bf16', 'fp16', 'fp32', 'fp8', 'int8')."""
        if dtype not in self.peak_tflops:
            known = ", ".join(sorted(self.peak_tflops))
            raise PlannerError(f"--gpu: {self.name} has no {dtype} peak in the catalog (has: {known})")
        return self.peak_tflops[dtype] * 1e12


def _gpu(name, memory_gib, price, link, description, hbm, net, achieved=None, **tflops) -> GPU:
    matmul, flash = achieved or ({}, {})
    return GPU(name, memory_gib, dict(tflops), price, link, description, hbm_gbps=hbm, network_gbps=net,
               matmul_tflops=matmul, flash_attention_tflops=flash)


# What the kernels reach, measured and published (`ACHIEVED_RATES`):
# - matmul: Bekman, "Machine Learning Engineering", compute/accelerator/README.md, "Maximum Achievable Matmul
#   FLOPS comparison table" (mamf-finder.py, mean of 100 iterations after 50 warm-up, per shape; BF16): A100 SXM
#   271.2 TFLOP/s (86.9% of 312), H100 SXM 794.5 (80.3% of 989; "H200 is the same"); FP8, H100 SXM 1,402.6.
# - flash attention: FlashAttention-2 forward + backward, causal, head dim 128, 16k tokens, in its own FLOP
#   count (4 s^2 d h forward, halved when causal, backward 2.5x). A100 80GB SXM4: 189 TFLOP/s (Dao 2023,
#   FlashAttention-2, Fig. 4(d), seq 16k). H100 SXM5: 326, from the FlashAttention-3 paper's FA2 bars (Shah et
#   al. 2024, Fig. 5(d): forward, causal, 335; Fig. 6(b): backward, 322, published without the causal mask
#   only), 3.5 / (1/335 + 2.5/322); FA2's own Fig. 7 is "up to 335" in its text.
# A100 40GB shares A100 80GB's die and clocks, H200 H100's: their figures are those.
A100_ACHIEVED = ({"bf16": 271.2}, {"bf16": 189.0})
H100_ACHIEVED = ({"bf16": 794.5, "fp8": 1402.6}, {"bf16": 326.0})


# HBM bandwidth: the same data sheets. Network: one NIC per GPU in the reference system of each GPU
# (DGX-2: 100 Gb/s EDR = 12.5 GB/s; DGX A100: 200 Gb/s HDR = 25 GB/s; DGX H100 / H200 / B200:
# 400 Gb/s NDR = 50 GB/s; MI300X platforms: 400 Gb/s = 50 GB/s); PCIe cards: 0 (unknown, set yours).


# fp32 here is the non-tensor-core FP32 rate (TF32 tensor-core rates are listed as tf32).
BUILTIN_GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        _gpu("v100", 32, 0.55, 300, "NVIDIA V100 SXM2 32GB", 900, 12.5, fp16=125, fp32=15.7),
        _gpu("a100-40gb", 40, 1.29, 600, "NVIDIA A100 SXM 40GB", 1555, 25,
             bf16=312, fp16=312, tf32=156, fp32=19.5, int8=624, achieved=A100_ACHIEVED),
        _gpu("a100-80gb", 80, 1.79, 600, "NVIDIA A100 SXM 80GB", 2039, 25,
             bf16=312, fp16=312, tf32=156, fp32=19.5, int8=624, achieved=A100_ACHIEVED),
        _gpu("h100-sxm", 80, 2.99, 900, "NVIDIA H100 SXM5 80GB", 3350, 50,
             bf16=989, fp16=989, tf32=494.7, fp32=67, fp8=1979, int8=1979, achieved=H100_ACHIEVED),
        _gpu("h100-pcie", 80, 2.49, 600, "NVIDIA H100 PCIe 80GB", 2000, 0,
             bf16=756, fp16=756, tf32=378, fp32=51, fp8=1513, int8=1513),
        _gpu("h200", 141, 3.79, 900, "NVIDIA H200 SXM 141GB", 4800, 50,
             bf16=989, fp16=989, tf32=494.7, fp32=67, fp8=1979, int8=1979, achieved=H100_ACHIEVED),
        _gpu("b200", 180, 4.99, 1800, "NVIDIA B200 180GB", 8000, 50,
             bf16=2250, fp16=2250, tf32=1100, fp32=75, fp8=4500, int8=4500),
        _gpu("mi300x", 192, 2.49, 896, "AMD Instinct MI300X 192GB", 5300, 50,
             bf16=1307.4, fp16=1307.4, tf32=653.7, fp32=163.4, fp8=2614.9, int8=2614.9),
        _gpu("l40s", 48, 0.99, 64, "NVIDIA L40S 48GB (PCIe, no NVLink)", 864, 0,
             bf16=362.05, fp16=362.05, tf32=183, fp32=91.6, fp8=733, int8=733),
    )
}

_ALIASES = {
    "a100": "a100-80gb", "a100-40": "a100-40gb", "a100-80": "a100-80gb",
    "h100": "h100-sxm", "v100-32gb": "v100", "mi300": "mi300x",
}


#: The catalog's per-dtype rates other than the data sheets' peaks (`planner probe` measures attention's).
ACHIEVED_RATES = ("matmul_tflops", "flash_attention_tflops")


@cache  # the built-in catalog does not change
def typical_share(key: str) -> float:
    """The mean share of bf16 peak the built-in GPUs with a published bf16 `key` rate reach: what a GPU without
    its own figure is taken to reach."""
    shares = [getattr(g, key)["bf16"] / g.peak_tflops["bf16"] for g in BUILTIN_GPUS.values()
              if "bf16" in getattr(g, key)]
    return sum(shares) / len(shares)


def achievable_tflops(gpu: GPU, key: str, dtype: str) -> float:
    """`gpu`'s published `key` rate (one of `ACHIEVED_RATES`) in `dtype`; without one, its `dtype` peak at the
    share of peak its bf16 figure reaches, or at `typical_share` where it has none."""
    rates, peak = getattr(gpu, key), gpu.peak_flops(dtype) / 1e12
    if dtype in rates:
        return rates[dtype]
    if "bf16" in rates and "bf16" in gpu.peak_tflops:
        return peak * rates["bf16"] / gpu.peak_tflops["bf16"]
    return peak * typical_share(key)


def load_catalog(path: str | Path | None = None) -> dict[str, GPU]:
    """The built-in catalog, extended or overridden by a user YAML file."""
    catalog = dict(BUILTIN_GPUS)
    if path is None:
        return catalog
    import yaml  # only when a catalog file is given: keeps `planner estimate` start-up small

    try:
        entries = yaml.safe_load(read_input(path, max_bytes=1 << 20).decode("utf-8"))
    except OSError as exc:
        raise PlannerError(f"--gpu-catalog: cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise PlannerError(f"--gpu-catalog: {path} is not YAML text: {exc}".splitlines()[0]) from None
    if not isinstance(entries, dict):
        raise PlannerError(f"--gpu-catalog: {path} must be a YAML mapping of GPU name -> fields")
    for name, fields in entries.items():
        catalog[str(name).lower()] = _catalog_entry(str(name).lower(), fields, catalog.get(str(name).lower()))
    return catalog


def _catalog_entry(name: str, fields: object, base: GPU | None) -> GPU:
    allowed = {"memory_gib", "peak_tflops", "price_per_hour", "description", "device", *GPU_BANDWIDTH_FIELDS,
               *GPU_RATE_FIELDS}
    if not isinstance(fields, dict) or set(fields) - allowed:
        bad = sorted(set(fields) - allowed) if isinstance(fields, dict) else fields
        raise PlannerError(f"--gpu-catalog: entry {name!r} has unknown fields {bad}; allowed: {sorted(allowed)}")
    if base is None:
        missing = {"memory_gib", "peak_tflops", "price_per_hour"} - set(fields)
        if missing:
            raise PlannerError(f"--gpu-catalog: new entry {name!r} needs {sorted(missing)}")
        base = GPU(name, 0.0, {}, 0.0)
    rates = ("peak_tflops", *GPU_RATE_FIELDS)  # per dtype: merged into the base entry's
    merged = replace(base, **{k: v for k, v in fields.items() if k not in rates})
    for key in rates:
        if key in fields:
            merged = replace(merged, **{key: {**getattr(base, key), **_per_dtype(name, key, fields[key])}})
    # physically meaningful ranges: today's largest GPU has 192 GiB and ~4,500 dense fp8 TFLOP/s
    checks.number(f"--gpu-catalog: {name}.memory_gib", merged.memory_gib, 0.0, 1e5, lo_open=True)
    checks.number(f"--gpu-catalog: {name}.price_per_hour", merged.price_per_hour, 0.0, 1e4)
    for key in GPU_BANDWIDTH_FIELDS:
        checks.number(f"--gpu-catalog: {name}.{key}", getattr(merged, key), 0.0, 1e6)
    for key in rates:
        for dtype, tflops in getattr(merged, key).items():
            checks.number(f"--gpu-catalog: {name}.{key}.{dtype}", tflops, 0.0, 1e6, lo_open=True)
    above = rate_above_peak(merged)
    if above is not None:
        raise PlannerError(f"--gpu-catalog: {name}.{above}")
    if merged.device not in DEVICES:
        raise PlannerError(f"--gpu-catalog: {name}.device must be one of {', '.join(DEVICES)}, got {merged.device!r}")
    if not isinstance(merged.description, str):
        raise PlannerError(f"--gpu-catalog: {name}.description must be text, got {merged.description!r}")
    return replace(merged, **{key: {k: float(v) for k, v in getattr(merged, key).items()} for key in rates})


def _per_dtype(name: str, key: str, value: object) -> dict[str, object]:
    """A catalog field that maps dtypes to TFLOP/s (peak_tflops, attention_tflops), keys as text."""
    if not isinstance(value, dict) or not value:
        raise PlannerError(f"--gpu-catalog: {name}.{key} must map dtypes to TFLOP/s, e.g. {{bf16: 989}}; got {value!r}")
    return {str(k): v for k, v in value.items()}


def get_gpu(name: str, catalog: dict[str, GPU] | None = None) -> GPU:
    catalog = catalog if catalog is not None else BUILTIN_GPUS
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in catalog:
        raise PlannerError(f"--gpu: unknown GPU {name!r}; known: {', '.join(sorted(catalog))}")
    return catalog[key]
