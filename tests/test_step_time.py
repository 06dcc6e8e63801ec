"""The step-time model's terms (planner/compute/step_time.py): each as its derivation states."""

from dataclasses import replace

import pytest

from planner.compute.step_time import A100_80GB_DGX, Efficiency, megatron_flops, ring_time, step_time
from planner.core.parallel import ParallelPlan
from planner.model.shapes import ModelShape
from tests.conftest import run_cli

GPT_175B = ModelShape(layers=96, hidden=12288, heads=96, vocab=51200, seq_len=2048, mlp="gelu", norm="layernorm",
                      position="learned")
TP8_PP8_V3 = ParallelPlan(engine="ddp", world=64, tp=8, pp=8, pp_virtual=3, pp_schedule="interleaved-1f1b", micro_batch=1,
                          grad_accum=64)


def test_megatron_flops_are_four_passes_of_two_flops_per_parameter_per_token_without_attention_and_logits():
    shape = ModelShape(layers=10, hidden=4096, heads=32, vocab=1, seq_len=1)
    assert megatron_flops(shape, 1000) == pytest.approx(4 * 2 * (12 * 10 * 4096**2) * 1000, rel=1e-4)  # s/6h -> 0


def test_a_ring_all_reduce_moves_two_n_minus_one_over_n_of_the_bytes_and_nothing_on_one_rank():
    assert ring_time(8e9, 1, 1e9) == 0.0
    assert ring_time(8e9, 4, 1e9) == pytest.approx(2 * 3 / 4 * 8)


def test_the_bubble_is_p_minus_one_over_v_m_of_the_other_ranks_work_which_lack_the_head():
    headless = step_time(replace(GPT_175B, vocab=1), TP8_PP8_V3, A100_80GB_DGX)  # every rank's work the same
    assert headless.bubble_s / (headless.compute_s + headless.tp_comm_s) == pytest.approx((8 - 1) / (3 * 64), rel=1e-4)
    t = step_time(GPT_175B, TP8_PP8_V3, A100_80GB_DGX)  # the last rank (the slowest) also runs the head and loss
    assert t.bubble_s == pytest.approx(headless.bubble_s, rel=1e-3)
    assert t.bubble_s / (t.compute_s + t.tp_comm_s) < (8 - 1) / (3 * 64)
    flat = step_time(GPT_175B, replace(TP8_PP8_V3, world=8, pp=1, pp_virtual=1), A100_80GB_DGX)
    assert flat.bubble_s == 0.0 and flat.pp_comm_s == 0.0


def test_matmul_time_is_the_flops_per_gpu_at_the_matmul_rate():
    # without flash attention (Megatron 2021) the scores are matmuls too, over the whole masked square
    eff = Efficiency(matmul_max=0.5, matmul_half_k=1e-9, link=1.0)  # no width dependence
    t = step_time(GPT_175B, TP8_PP8_V3, A100_80GB_DGX, eff)
    # the pipeline runs at its last stage's pace: its layers' share plus the whole output layer (pp - 1 more of it)
    tokens = 64 * GPT_175B.seq_len
    head = 6 * GPT_175B.vocab * GPT_175B.hidden * tokens * (TP8_PP8_V3.pp - 1)
    # at half the A100's achievable GEMM rate (271.2 TFLOP/s, Bekman's MAMF table)
    assert t.matmul_s + t.attention_s == pytest.approx((megatron_flops(GPT_175B, 64) + head) / 64 / (0.5 * 271.2e12),
                                                       rel=2e-3)
    assert t.compute_s == pytest.approx(t.matmul_s + t.attention_s + t.memory_s) and t.memory_s > 0


def test_flash_attention_skips_the_causal_half_and_pads_the_head_dimension_to_its_kernel():
    from planner.compute.step_time import Kernels, flash_padded_head_dim

    assert [flash_padded_head_dim(d) for d in (64, 96, 112, 128)] == [64, 96, 128, 128]
    eff = Efficiency(matmul_max=0.5, matmul_half_k=1e-9, attention=0.25)
    plan = replace(TP8_PP8_V3, world=8, pp=1, pp_virtual=1, pp_schedule="1f1b")
    shape = replace(GPT_175B, heads=96)  # head dimension 128: no padding
    unfused = step_time(shape, plan, A100_80GB_DGX, eff)
    flash = step_time(shape, plan, A100_80GB_DGX, eff, kernels=Kernels(flash_attention=True))
    # half the FLOPs, at a quarter of FlashAttention-2's published A100 rate (189 TFLOP/s) against the matmuls' half
    # of its achievable GEMM rate (271.2), plus the scores flash's backward recomputes (half a forward more on the
    # 4 passes of a fully checkpointed step)
    rates = (0.5 * 271.2) / (0.25 * 189.0)
    assert flash.attention_s == pytest.approx(unfused.attention_s / 2 * rates * 4.5 / 4)
    assert flash.memory_s < unfused.memory_s  # no scores through memory


def test_an_encoder_attends_both_ways_so_flash_computes_every_score():
    from planner.compute.step_time import Kernels

    decoder = ModelShape(4, 1024, 8, 32000, 1024)
    plan = ParallelPlan(engine="fsdp", world=8, fsdp_mode="full")
    flash = Kernels(flash_attention=True)
    causal = step_time(decoder, plan, A100_80GB_DGX, kernels=flash)
    both_ways = step_time(replace(decoder, arch="encoder"), plan, A100_80GB_DGX, kernels=flash)
    assert both_ways.attention_s == pytest.approx(2 * causal.attention_s)


def test_a_data_parallel_ring_across_nodes_moves_at_the_nics_of_its_members_on_a_node():
    from planner.compute.step_time import data_parallel_bandwidth

    h100 = A100_80GB_DGX  # 8 GPUs a node, 300 GB/s NVLink each way, one 25 GB/s NIC per GPU
    inside = ParallelPlan(engine="fsdp", world=8, fsdp_mode="full")
    across = ParallelPlan(engine="fsdp", world=64, fsdp_mode="full")
    across_tp8 = ParallelPlan(engine="fsdp", world=64, fsdp_mode="full", tp=8)
    assert data_parallel_bandwidth(inside, h100, 1.0) == h100.nvlink_bytes_per_s
    assert data_parallel_bandwidth(across, h100, 1.0) == min(h100.nvlink_bytes_per_s, 8 * h100.network_bytes_per_s)
    assert data_parallel_bandwidth(across_tp8, h100, 1.0) == h100.network_bytes_per_s  # one member a node


def test_our_eager_blocks_memory_traffic_is_the_bytes_its_ops_move():
    # the planner prices our block's element-wise work from bytes counted op by op (EAGER_BLOCK): count again
    import itertools

    import torch

    from planner.compute.step_time import EAGER_TORCH, memory_bound_bytes
    from planner.core.schema import ModelConfig
    from planner.model.shapes import shape_of
    from pretrain.memory_probe import MemoryTrafficCounter
    from pretrain.model import Block, rope_tables

    for (hidden, heads, kv, ffn), dtype in itertools.product(((384, 6, 2, 1024), (512, 8, 8, 1536)),
                                                           (torch.bfloat16, torch.float32)):
        cfg = ModelConfig(layers=1, hidden=hidden, heads=heads, kv_heads=kv, ffn_hidden=ffn, vocab=256, seq_len=64)
        torch.set_default_dtype(dtype)
        try:
            block = Block(cfg, ffn)
            x = torch.randn(2, cfg.seq_len, hidden, requires_grad=True)
            cos, sin = rope_tables(cfg.seq_len, hidden // heads, cfg.rope_theta)
            with MemoryTrafficCounter() as counted:
                block(x, cos, sin).backward(torch.ones(2, cfg.seq_len, hidden))
        finally:
            torch.set_default_dtype(torch.float32)
        per_token = counted.bytes / (2 * cfg.seq_len)
        kernels = replace(EAGER_TORCH, activation_bytes=dtype.itemsize)
        assert memory_bound_bytes(shape_of(cfg), kernels) == pytest.approx(per_token, rel=0.03), (hidden, dtype)


def test_the_mpt_shapes_of_the_calibration_table_have_its_parameter_counts():
    import csv

    module = _bench()
    for file in ("llmfoundry_mpt_h100.csv", "llmfoundry_mpt_a100_80gb.csv"):
        for row in csv.DictReader((module.DATA / file).open()):
            shape = module.mpt_shape(row["model"], int(row["seq_len"]))
            assert shape.param_count() == pytest.approx(int(row["num_params"]), rel=1e-3), row["model"]


def test_no_mpt_head_the_benchmarks_ran_is_padded_by_flash_attention():
    # llm-foundry's benchmarks load scripts/train/yamls/pretrain/mpt-*.yaml: MPT-30B there has 56 heads of 128, not
    # the released checkpoint's 64 of 112 (which flash attention would pad to 128 and price 14% dearer)
    from planner.compute.step_time import flash_padded_head_dim

    module = _bench()
    for model in module.MPT_SHAPES:
        shape = module.mpt_shape(model, 2048)
        assert flash_padded_head_dim(shape.head_dim) == shape.head_dim, model
    assert module.mpt_shape("30b", 2048).head_dim == 128


def test_tensor_parallel_beyond_a_node_uses_the_network_and_costs_more():
    inside = step_time(GPT_175B, TP8_PP8_V3, A100_80GB_DGX)
    across = step_time(GPT_175B, replace(TP8_PP8_V3, tp=16, pp=4), A100_80GB_DGX)
    assert across.tp_comm_s > 5 * inside.tp_comm_s


def _bench():
    import importlib.util
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step_time.py"
    spec = importlib.util.spec_from_file_location("bench_step_time", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_calibrated_constants_are_the_fit_on_the_named_tables_and_nothing_else():
    from dataclasses import astuple

    from planner.compute.step_time import CALIBRATED

    module = _bench()
    names = {row[0].split()[0] for row in module.calibration_rows()}
    assert names == {"Megatron", "MPT"}  # Narayanan et al. 2021 Table 1 and llm-foundry's H100 BF16 table
    assert module.fit(module.calibration_rows()) == pytest.approx(astuple(CALIBRATED), rel=2e-3)


def test_layer_flops_equal_megatrons_count_for_gpt_blocks_with_full_recomputation():
    from planner.compute.step_time import layer_flops

    assert layer_flops(GPT_175B, 8, passes=4) == pytest.approx(megatron_flops(GPT_175B, 8), rel=2e-3)


def test_overlapped_data_parallel_traffic_is_what_outlasts_the_backward_and_a_share_of_what_it_hides():
    from planner.compute.step_time import CALIBRATED, Kernels

    plan = ParallelPlan(engine="fsdp", world=64, fsdp_mode="full", micro_batch=1, grad_accum=1)
    shape = ModelShape(layers=32, hidden=4096, heads=32, vocab=32000, seq_len=4096)
    serial = step_time(shape, plan, A100_80GB_DGX, CALIBRATED, checkpointing="none")
    overlapped = step_time(shape, plan, A100_80GB_DGX, CALIBRATED, checkpointing="none", overlap_dp=True)
    hidden = min(serial.dp_comm_s, serial.compute_s * 2 / 3)
    assert overlapped.dp_comm_s == pytest.approx(serial.dp_comm_s - hidden + CALIBRATED.overlap * hidden)
    # an engine without `no_sync` reduces (FSDP: gathers too) on every micro-batch, each behind its own backward
    four = replace(plan, grad_accum=4)
    once = step_time(shape, four, A100_80GB_DGX, CALIBRATED, checkpointing="none")
    every = step_time(shape, four, A100_80GB_DGX, CALIBRATED, checkpointing="none",
                      kernels=Kernels(reduce_every_micro_batch=True))
    assert every.dp_comm_s == pytest.approx(4 * once.dp_comm_s)


def test_deepspeed_zero_1_2_all_reduce_the_gradients_and_gather_the_parameters_where_fsdp_reduce_scatters():
    # DeepSpeed's stage 1-2 (use_multi_rank_bucket_allreduce, its default) all-reduce every bucket whole and keep
    # their partition; FSDP shard-grad-op reduce-scatters; both then all-gather the updated parameters
    from planner.compute.step_time import data_parallel_traffic

    n, params, grad, param = 8, 1e9, 2, 2
    half = (n - 1) / n * params
    ddp = data_parallel_traffic(ParallelPlan(engine="ddp", world=n), params, grad, param)
    zero2 = data_parallel_traffic(ParallelPlan(engine="deepspeed", world=n, zero_stage=2), params, grad, param)
    zero1 = data_parallel_traffic(ParallelPlan(engine="deepspeed", world=n, zero_stage=1), params, grad, param)
    zero3 = data_parallel_traffic(ParallelPlan(engine="deepspeed", world=n, zero_stage=3), params, grad, param)
    sgo = data_parallel_traffic(ParallelPlan(engine="fsdp", world=n, fsdp_mode="shard-grad-op"), params, grad, param)
    assert ddp == (2 * half * grad, 0.0, 0.0)
    assert zero2 == zero1 == (2 * half * grad, 0.0, half * param)
    assert sgo == (0.0, half * grad + half * param, 0.0)
    assert zero3 == (0.0, half * grad + 2 * half * param, 0.0)
    # on NCCL (every fraction 1) ZeRO-2 costs DDP's all-reduce plus a gather
    shape = ModelShape(layers=32, hidden=4096, heads=32, vocab=32000, seq_len=4096)
    plans = {e: ParallelPlan(engine=e, world=8, **k) for e, k in (("ddp", {}), ("deepspeed", {"zero_stage": 2}))}
    t = {e: step_time(shape, p, A100_80GB_DGX, grad_bytes=2) for e, p in plans.items()}
    gather = (7 / 8 * shape.param_count() * 2) / (A100_80GB_DGX.nvlink_bytes_per_s * Efficiency().link)
    assert t["deepspeed"].dp_comm_s == pytest.approx(t["ddp"].dp_comm_s + gather)


def test_the_optimizer_steps_the_shard_under_zero_and_fsdp_and_the_whole_rank_under_ddp():
    from planner.compute.step_time import CALIBRATED, UNFUSED_ADAMW_BYTES, Kernels

    shape = ModelShape(layers=32, hidden=4096, heads=32, vocab=32000, seq_len=4096)
    kernels = Kernels(optimizer_bytes=UNFUSED_ADAMW_BYTES)
    ddp = step_time(shape, ParallelPlan(engine="ddp", world=8), A100_80GB_DGX, CALIBRATED, kernels=kernels)
    fsdp = step_time(shape, ParallelPlan(engine="fsdp", world=8, fsdp_mode="full"), A100_80GB_DGX, CALIBRATED,
                     kernels=kernels)
    assert ddp.optimizer_s == pytest.approx(
        96 * shape.param_count() / (A100_80GB_DGX.hbm_bytes_per_s * CALIBRATED.memory))
    assert fsdp.optimizer_s == pytest.approx(ddp.optimizer_s / 8)


def test_megatron_runs_six_tensor_parallel_collectives_a_layer_with_full_recomputation_and_four_without():
    full = step_time(GPT_175B, TP8_PP8_V3, A100_80GB_DGX, checkpointing="full")
    none = step_time(GPT_175B, TP8_PP8_V3, A100_80GB_DGX, checkpointing="none")
    assert full.tp_comm_s / none.tp_comm_s == pytest.approx(6 / 4)


def _estimate_json(capsys, *flags: str) -> dict:
    import json

    from planner.cli import main as planner_main

    capsys.readouterr()
    assert planner_main(["estimate", "--model", "llama2-7b", "--gpu", "h100-sxm", "--gpus", "64", "--fsdp", "full",
                         "--micro-batch", "2", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_estimate_json_gives_the_predicted_step_time_tokens_per_second_and_mfu(capsys):
    r = _estimate_json(capsys)
    t = r["time"]
    assert r["step_time_s"] == t["step_time_s"] == pytest.approx(sum(t["breakdown_s"].values()))
    assert r["tokens_per_s_per_gpu"] == pytest.approx(t["tokens_per_step"] / t["step_time_s"] / 64)
    peak = 989e12  # h100-sxm, dense bf16: MFU is against the data sheet's peak
    flops_per_token = r["flops"] / r["compute"]["tokens"]
    assert r["mfu_predicted"] == pytest.approx(flops_per_token * r["tokens_per_s_per_gpu"] / peak)
    # while the kernels are priced at what they reach on it (the catalog's published rates)
    assert t["kernel_tflops"] == {"matmul": 794.5, "flash_attention": 326.0}


def test_without_mfu_the_predicted_mfu_prices_the_run_and_is_named(capsys):
    r = _estimate_json(capsys)
    assert r["mfu_source"] == "predicted" and r["mfu_used"] == r["mfu_predicted"] == r["compute"]["mfu"]
    gpu_hours = r["flops"] / (989e12 * r["mfu_predicted"]) / 3600
    assert r["gpu_hours"] == pytest.approx(gpu_hours)


def test_a_given_mfu_is_the_one_used_and_is_named(capsys):
    r = _estimate_json(capsys, "--mfu", "0.35")
    assert r["mfu_source"] == "--mfu" and r["mfu_used"] == 0.35 and r["mfu_predicted"] != 0.35
    assert r["gpu_hours"] == pytest.approx(r["flops"] / (989e12 * 0.35) / 3600)


def test_the_table_says_which_mfu_the_days_and_dollars_use(capsys):
    from planner.cli import main as planner_main

    base = ["estimate", "--model", "llama2-7b", "--gpu", "h100-sxm", "--gpus", "64", "--fsdp", "full"]
    capsys.readouterr()
    assert planner_main([*base, "--mfu", "0.35"]) == 0
    assert "MFU used: 35.0%, given by --mfu" in capsys.readouterr().out
    assert planner_main(base) == 0
    out = capsys.readouterr().out
    assert "predicted by the step-time model" in out and "step time (predicted)" in out


def test_float8_runs_the_large_block_linears_in_fp8_and_keeps_small_ones_in_bf16():
    from planner.compute.step_time import block_linears, fp8_linear
    from planner.model.presets import get_preset

    assert all(fp8_linear(i, o) for i, o in block_linears(get_preset("llama3-8b").shape))
    assert not any(fp8_linear(i, o) for i, o in block_linears(ModelShape(4, 256, 4, 32000, 1024)))  # ffn 768
    assert not fp8_linear(4096, 1000)  # not a multiple of 16: the tensor cores' rule


def test_fp8_is_planned_faster_than_bf16_with_the_same_memory_and_emit_refuses_it(capsys, tmp_path):
    bf16 = _estimate_json(capsys)
    fp8 = _estimate_json(capsys, "--precision", "fp8")
    # faster, by less than fp8's 2x peak: attention, the output layer, memory-bound work and the casts stay
    assert 0.5 * bf16["step_time_s"] < fp8["step_time_s"] < 0.9 * bf16["step_time_s"]
    assert fp8["memory_per_gpu_bytes"] == bf16["memory_per_gpu_bytes"]
    out = run_cli("emit", "--out", str(tmp_path / "job"), "--model", "llama2-7b", "--gpu", "h100-sxm", "--gpus", "8",
                  "--fsdp", "full", "--precision", "fp8")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--precision fp8: planned" in out.stderr
    assert not (tmp_path / "job").exists()
