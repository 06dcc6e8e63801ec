"""The step-time model (planner/compute/step_time.py) against published step times.

Fitted on two named tables only (the README names them):
- Narayanan et al. 2021, Table 1: Megatron-LM weak scaling, 1.7B to 1T on A100 80GB, TP x PP x DP, fused
  kernels, no flash attention (data/published/megatron_narayanan2021_table1.csv);
- llm-foundry's MPT benchmarks on H100 80GB, BF16: FSDP full shard, 760M to 70B, sequence 512 to 65,536,
  with and without activation checkpointing, flash attention, Composer's FSDP1 (data/published/llmfoundry_mpt_h100.csv).
Six constants shared by every row and both GPUs (matmul efficiency at large width and the width at half of
it, achieved link fraction, flash attention's fraction of peak, achieved HBM fraction, the share of overlapped
communication that still costs), least squares on log time. Each run is priced as it ran (its kernels, optimizer
and engine: `MEGATRON`, `LLM_FOUNDRY`, read from its published scripts and configs), never with a constant of
its own. Reported:

- every row's error with both tables in the fit, each table's errors, and each table's errors when it is held
  out (fitted on the other table alone; a constant the other table cannot inform, flash attention's rate for
  Narayanan's table, stays at its `Efficiency()` default, and a faint pull toward those defaults settles a
  direction a table leaves flat);
- checks never fitted: llm-foundry's MPT on A100 80GB (the same README), Korthikanti et al. 2022, Table 5 (full
  recompute), torchtitan's Llama 3.1 8B FSDP rows on H100 (Tables 1 and 3): eager as our trainer runs, with
  torch.compile, and with compile + Float8; and its Llama 3.1 70B FSDP 32 x TP 8 rows on 256 H100s (Table 4).

    .venv/bin/python benchmarks/bench_step_time.py
"""

from __future__ import annotations

import csv
import math
from dataclasses import astuple, replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from planner.compute.step_time import (
    A100_80GB_DGX,
    COMPILED_TORCH,
    EAGER_TORCH,
    LLM_FOUNDRY,
    MEGATRON_2021,
    Efficiency,
    hardware_of,
    megatron_flops,
    step_time,
)
from planner.core.parallel import ParallelPlan
from planner.model.hardware import BUILTIN_GPUS
from planner.model.shapes import ModelShape

DATA = Path(__file__).resolve().parents[1] / "data" / "published"
H100_DGX = hardware_of(BUILTIN_GPUS["h100-sxm"], "bf16", 8)
#: MPT architectures (layers, d_model, heads) of llm-foundry's scripts/train/yamls/pretrain/mpt-*.yaml, which
#: `submit_benchmarks.py` loads; vocabulary 50,368, GeLU MLP 4h, LayerNorm, tied embeddings, learned positions in these
#: benchmarks (the table's parameter count grows with the sequence by s x h). Each gives the table's num_params within
#: 0.1% (tests/test_step_time.py). Every head is 128 wide: mpt-30b.yaml has 56 heads (every stored version, and the
#: older yamls/mpt/30b.yaml), not the released MPT-30B checkpoint's 64 (head 112, which flash attention pads to 128).
MPT_SHAPES = {"125m": (12, 768, 12), "350m": (24, 1024, 16), "760m": (24, 1536, 12), "1b": (24, 2048, 16), "3b": (32, 2560, 20), "7b": (32, 4096, 32),
              "13b": (40, 5120, 40), "30b": (48, 7168, 56), "70b": (80, 8192, 64)}

Row = tuple  # (name, shape, plan, hardware, step_time keyword arguments, measured seconds)


def _megatron_row(r: dict, heads: str, micro_batch: str, pp_virtual: int) -> tuple[ModelShape, ParallelPlan]:
    """A Megatron table row as the planner's own types: the model's shape and the layout."""
    shape = ModelShape(layers=int(r["num_layers"]), hidden=int(r["hidden_size"]), heads=int(r[heads]),
                       vocab=int(r["vocab_size"]), seq_len=int(r["seq_len"]), mlp="gelu", norm="layernorm",
                       position="learned")
    tp, pp, gpus, mb = int(r["tp"]), int(r["pp"]), int(r["num_gpus"]), int(r[micro_batch])
    dp = gpus // (tp * pp)
    schedule = "interleaved-1f1b" if pp_virtual > 1 else "1f1b"
    plan = ParallelPlan(engine="ddp", world=gpus, tp=tp, pp=pp, pp_virtual=pp_virtual, pp_schedule=schedule, micro_batch=mb,
                        grad_accum=int(r["global_batch_size"]) // (dp * mb))
    return shape, plan


#: Megatron-LM 2021 (fp16 mixed precision: the gradients it all-reduces are the fp16 model's, as no
#: `--accumulate-allreduce-grads-in-fp32` is set), full recomputation, its fused kernels.
MEGATRON = {"checkpointing": "full", "kernels": MEGATRON_2021, "grad_bytes": 2}


def megatron_rows() -> list[Row]:
    """Narayanan et al. 2021, Table 1: the time follows from the achieved teraFLOP/s per GPU and the paper's own
    FLOP count."""
    rows = []
    for r in csv.DictReader((DATA / "megatron_narayanan2021_table1.csv").open()):
        layers_per_virtual = int(r["num_layers_per_virtual_pipeline_stage_script"] or 0)
        virtual = int(r["num_layers"]) // (int(r["pp"]) * layers_per_virtual) if layers_per_virtual else 1
        shape, plan = _megatron_row(r, "attention_heads", "micro_batch_size_script", virtual)
        measured = megatron_flops(shape, plan.batch) / (plan.world * float(r["tflops_per_gpu"]) * 1e12)
        # DDP=torch (the rows without a pipeline): torch DDP under `no_sync` but for the last micro-batch, whose
        # bucketed all-reduce overlaps its backward; DDP=local all-reduces after the backward
        kw = {**MEGATRON, "overlap_dp": r["ddp_impl_script"] == "torch"}
        rows.append((f"Megatron {r['model']}", shape, plan, A100_80GB_DGX, kw, measured))
    return rows


def mpt_shape(model: str, seq_len: int) -> ModelShape:
    layers, hidden, heads = MPT_SHAPES[model]
    return ModelShape(layers, hidden, heads, 50368, seq_len, mlp="gelu", norm="layernorm", position="learned",
                      tied_embeddings=True)


def llm_foundry_rows(file: str = "llmfoundry_mpt_h100.csv", hw=H100_DGX) -> list[Row]:
    """llm-foundry's MPT in BF16 (each distinct row once): step time = global-batch tokens / tokens per s. `amp_bf16`
    rows ran FSDP's `DEFAULT` mixed precision (`LLM_FOUNDRY`); `bf16` rows its `PURE` one, which reduce-scatters
    bf16 gradients and only pre-divides them (4 bytes a parameter, no cast)."""
    rows, seen = [], set()
    for r in csv.DictReader((DATA / file).open()):
        key = tuple(r[c] for c in ("model", "seq_len", "num_gpus", "micro_batch_size", "grad_accum", "precision"))
        if r["precision"] not in ("amp_bf16", "bf16") or key in seen:
            continue  # the source's table repeats its first rows
        seen.add(key)
        checkpointing = "full" if r["activation_checkpointing"] == "True" else "none"
        plan = ParallelPlan(engine="fsdp", world=int(r["num_gpus"]), fsdp_mode="full",
                            micro_batch=int(r["micro_batch_size"]), grad_accum=int(r["grad_accum"]))
        measured = int(r["global_batch_tokens"]) / int(r["throughput_tokens_per_s"])
        kw = {"checkpointing": checkpointing, "kernels": LLM_FOUNDRY, "overlap_dp": True}
        if r["mp_mode"] == "PURE":
            kw |= {"kernels": replace(LLM_FOUNDRY, reduce_prep_bytes=4.0), "grad_bytes": 2}
        name = f"MPT {r['model']} s{r['seq_len']} {r['num_gpus']} GPUs{' ckpt' if checkpointing == 'full' else ''}"
        rows.append((name, mpt_shape(r["model"], int(r["seq_len"])), plan, hw, kw, measured))
    return rows


def llm_foundry_a100_rows() -> list[Row]:
    """llm-foundry's MPT on A100 80GB (the same README, its 1,600 Gb/s RoCE cluster: 25 GB/s a GPU), never fitted."""
    return llm_foundry_rows("llmfoundry_mpt_a100_80gb.csv", A100_80GB_DGX)


def calibration_rows() -> list[Row]:
    return megatron_rows() + llm_foundry_rows()


def korthikanti_rows() -> list[Row]:
    """Korthikanti et al. 2022, Table 5, full recomputation (iteration times as published)."""
    return [(r["check_id"], *_megatron_row(r, "attention_heads", "micro_batch_size", int(r["pp_virtual"] or 1)),
             A100_80GB_DGX, MEGATRON, float(r["iteration_time_s"]))
            for r in csv.DictReader((DATA / "other_checks.csv").open())
            if r["check_id"].startswith("korthikanti2022") and r["recompute"] == "full"]


def _torchtitan(tables: tuple[str, ...], model: str) -> list[tuple[dict, ModelShape, ParallelPlan, float]]:
    """torchtitan's rows of `tables` on H100 (`data/published/torchtitan_llama3_h100.csv`) at its default sequence
    8,192 (the tables give none): each row's FSDP (x TP) layout, one micro-batch of its local batch (torchtitan
    accumulates nothing by default), and its measured step from tokens/s per GPU."""
    from planner.model.presets import get_preset

    shape = replace(get_preset(model).shape, seq_len=8192)
    out = []
    for r in csv.DictReader((DATA / "torchtitan_llama3_h100.csv").open()):
        if r["table"] not in tables:
            continue
        gpus = int(r["num_gpus"])
        plan = ParallelPlan(engine="fsdp", world=gpus, tp=int(r["tp"]), fsdp_mode="full",
                            micro_batch=int(r["local_batch_size"]), grad_accum=1)
        out.append((r, shape, plan, plan.batch * shape.seq_len / (float(r["tps_per_gpu"]) * gpus)))
    return out


def torchtitan_rows() -> list[Row]:
    """torchtitan's Llama 3.1 8B FSDP rows on H100 (Tables 1 and 3), selective (op-level) checkpointing: eager,
    with torch.compile (fused element-wise kernels), and with torch.compile and Float8 (torchao: the blocks'
    large linears in fp8)."""
    rows = []
    for r, shape, plan, measured in _torchtitan(("1", "3"), "llama3-8b"):
        kernels = COMPILED_TORCH if r["torch_compile"] == "true" else EAGER_TORCH
        kernels = replace(kernels, fp8_linears=r["float8"] == "true")
        kw = {"checkpointing": "selective", "kernels": kernels, "overlap_dp": True}
        how = r["row_label"].removeprefix("FSDP").strip(" +") or "eager"
        rows.append((f"torchtitan {plan.world} GPUs, {how}", shape, plan, H100_DGX, kw, measured))
    return rows


def torchtitan_2d_rows() -> list[Row]:
    """torchtitan's Llama 3.1 70B on 256 H100s (Table 4): FSDP 32 x TP 8, torch.compile, Float8, full
    checkpointing, local batch 16. Its AsyncTP row overlaps the TP collectives with the matmuls, which the model
    does not: it is priced as the other, and its error shows what that overlap buys."""
    kw = {"checkpointing": "full", "kernels": replace(COMPILED_TORCH, fp8_linears=True), "overlap_dp": True}
    return [(f"torchtitan 70B {r['row_label']}", shape, plan, H100_DGX, kw, measured)
            for r, shape, plan, measured in _torchtitan(("4",), "llama3.1-70b")]


def predict(row: Row, theta) -> float:
    _, shape, plan, hw, kw, _ = row
    return step_time(shape, plan, hw, Efficiency(*theta), **kw).total_s


def informed(rows: list[Row]) -> list[bool]:
    """Which constants move any of `rows`' predictions (Narayanan's table has no flash attention, so nothing in
    it informs flash attention's rate): each nudged at the prior and at a point where overlapped traffic costs."""
    moved = [False] * len(astuple(Efficiency()))
    for point in (astuple(Efficiency()), (0.6, 300.0, 0.5, 0.3, 0.6, 0.3)):
        base = [predict(row, point) for row in rows]
        for i, value in enumerate(point):
            theta = list(point)
            theta[i] = value * 1.5 + 0.05
            moved[i] |= any(abs(predict(row, theta) / p - 1) > 1e-9 for row, p in zip(rows, base, strict=True))
    return moved


def fit(rows: list[Row]) -> np.ndarray:
    """Least squares on log time over the constants `rows` inform; any other stays at its `Efficiency()`
    default (a prior, not a fit)."""
    prior = np.array(astuple(Efficiency()))
    free = np.array(informed(rows))

    def full(x):
        theta = prior.copy()
        theta[free] = x
        return theta

    lower = np.array([0.1, 1.0, 0.05, 0.05, 0.05, 0.0])
    upper = np.array([1.0, 1e5, 1.0, 1.0, 1.0, 1.0])
    scale = np.log(upper[1] / lower[1])

    def residuals(x):
        # a faint pull toward the prior (1e-3 of a log-time residual per full range) settles a direction the rows
        # leave flat (llm-foundry alone: the link fraction against the overlap share) without moving the errors
        theta = full(x)
        pull = [np.log(theta[1] / prior[1]) / scale, *(theta[i] - prior[i] for i in (0, 2, 3, 4, 5))]
        return [math.log(predict(row, theta) / row[-1]) for row in rows] + [1e-3 * p for p in pull]

    # a few starts, the best kept: from one start the fit can settle in a basin another start leaves
    starts = [prior, *(np.array((m, k, link, 0.3, 0.6, 0.3)) for m in (0.6, 0.9) for k in (30.0, 300.0)
                       for link in (0.5, 1.0))]
    fits = [least_squares(residuals, x0[free], bounds=(lower[free], upper[free])) for x0 in starts]
    return full(min(fits, key=lambda f: f.cost).x)


def errors(rows: list[Row], theta) -> list[float]:
    return [predict(row, theta) / row[-1] - 1 for row in rows]


def summary(errs) -> str:
    a = np.abs(errs)
    return f"mean |error| {a.mean():.1%}, worst {a.max():.1%}"


def report(title: str, rows: list[Row], theta, held: list[float] | None = None) -> None:
    print(f"\n{title}")
    print(f"{'row':<44} {'measured s':>10} {'predicted s':>11} {'error':>8}" + ("  held out" if held else ""))
    for i, (row, e) in enumerate(zip(rows, errors(rows, theta), strict=True)):
        print(f"{row[0]:<44} {row[-1]:>10.3f} {predict(row, theta):>11.3f} {e:>+8.1%}"
              + (f"  {held[i]:+8.1%}" if held else ""))
    print(summary(errors(rows, theta)) + (f"; held out: {summary(held)}" if held else ""))


def constants(theta, rows: list[Row] | None = None) -> str:
    """The fitted constants, each marked where `rows` cannot inform it (held at its `Efficiency()` default)."""
    free = informed(rows) if rows else [True] * len(theta)
    return ", ".join(f"{name} {value:.3f}" + ("" if f else " (prior)")
                     for name, value, f in zip(Efficiency.__dataclass_fields__, theta, free, strict=True))


def worst(rows: list[Row], errs) -> str:
    i = int(np.argmax(np.abs(errs)))
    return f"{errs[i]:+.1%} ({rows[i][0]})"


def main() -> None:
    megatron, foundry = megatron_rows(), llm_foundry_rows()
    theta = fit(megatron + foundry)
    print("fitted on Narayanan et al. 2021 Table 1 + llm-foundry MPT H100 BF16: " + constants(theta))
    alone_foundry, alone_megatron = fit(foundry), fit(megatron)
    print("fitted on llm-foundry alone: " + constants(alone_foundry, foundry))
    print("fitted on Narayanan alone: " + constants(alone_megatron, megatron))
    held_megatron = errors(megatron, alone_foundry)
    held_foundry = errors(foundry, alone_megatron)
    report("calibration: Narayanan et al. 2021, Table 1 (right: fitted on llm-foundry alone)", megatron, theta,
           held_megatron)
    report("calibration: llm-foundry MPT on H100, BF16 (right: fitted on Narayanan alone)", foundry, theta, held_foundry)
    korthikanti, torchtitan, a100 = korthikanti_rows(), torchtitan_rows(), llm_foundry_a100_rows()
    report("check, never fitted: llm-foundry MPT on A100 80GB (BF16)", a100, theta)
    report("check, never fitted: Korthikanti et al. 2022, Table 5 (full recomputation)", korthikanti, theta)
    report("check, never fitted: torchtitan Llama 3.1 8B, FSDP on H100 (eager; torch.compile; compile + Float8)",
           torchtitan, theta)
    two_d = torchtitan_2d_rows()
    report("check, never fitted: torchtitan Llama 3.1 70B, FSDP 32 x TP 8 on 256 H100s (compile + Float8)", two_d,
           theta)
    print("\nsummary (mean |error|, worst)")
    for table, role, rows, errs in (
            ("Narayanan et al. 2021, Table 1", "fit", megatron, errors(megatron, theta)),
            ("llm-foundry MPT H100 BF16", "fit", foundry, errors(foundry, theta)),
            ("Narayanan et al. 2021, Table 1", "held out", megatron, held_megatron),
            ("llm-foundry MPT H100 BF16", "held out", foundry, held_foundry),
            ("llm-foundry MPT A100 80GB", "check", a100, errors(a100, theta)),
            ("Korthikanti et al. 2022, Table 5", "check", korthikanti, errors(korthikanti, theta)),
            ("torchtitan 8B eager", "check", torchtitan[::3], errors(torchtitan[::3], theta)),
            ("torchtitan 70B FSDP x TP (sync)", "check", two_d[:1], errors(two_d[:1], theta))):
        print(f"{table:<34} {role:<9} {np.abs(errs).mean():>6.1%}  {worst(rows, errs)}")


if __name__ == "__main__":
    main()
