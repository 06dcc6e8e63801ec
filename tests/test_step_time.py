"""The step-time model's terms (planner/compute/step_time.py): each as its derivation states."""

from dataclasses import replace

import pytest

from planner.compute.step_time import A100_80GB_DGX, Efficiency, megatron_flops, ring_time, step_time
from planner.core.parallel import ParallelPlan
from planner.model.shapes import ModelShape

GPT_175B = ModelShape(layers=96, hidden=12288, heads=96, vocab=51200, seq_len=2048, mlp="gelu", norm="layernorm",
                      position="learned")
TP8_PP8_V3 = ParallelPlan(engine="ddp", world=64, tp=8, pp=8, pp_virtual=3, micro_batch=1, grad_accum=64)


def test_megatron_flops_are_four_passes_of_two_flops_per_parameter_per_token_without_attention_and_logits():
    shape = ModelShape(layers=10, hidden=4096, heads=32, vocab=1, seq_len=1)
    assert megatron_flops(shape, 1000) == pytest.approx(4 * 2 * (12 * 10 * 4096**2) * 1000, rel=1e-4)  # s/6h -> 0


def test_a_ring_all_reduce_moves_two_n_minus_one_over_n_of_the_bytes_and_nothing_on_one_rank():
    assert ring_time(8e9, 1, 1e9) == 0.0
    assert ring_time(8e9, 4, 1e9) == pytest.approx(2 * 3 / 4 * 8)


def test_the_bubble_is_p_minus_one_over_v_m_of_the_pipelined_work():
    t = step_time(GPT_175B, TP8_PP8_V3, A100_80GB_DGX)
    assert t.bubble_s / (t.compute_s + t.tp_comm_s) == pytest.approx((8 - 1) / (3 * 64))
    flat = step_time(GPT_175B, replace(TP8_PP8_V3, world=8, pp=1, pp_virtual=1), A100_80GB_DGX)
    assert flat.bubble_s == 0.0 and flat.pp_comm_s == 0.0


def test_compute_time_is_the_flops_per_gpu_at_the_matmul_rate():
    eff = Efficiency(matmul_max=0.5, matmul_half_k=1e-9, link=1.0)  # no width dependence
    t = step_time(GPT_175B, TP8_PP8_V3, A100_80GB_DGX, eff)
    assert t.compute_s == pytest.approx(megatron_flops(GPT_175B, 64) / 64 / (0.5 * 312e12))


def test_tensor_parallel_beyond_a_node_uses_the_network_and_costs_more():
    inside = step_time(GPT_175B, TP8_PP8_V3, A100_80GB_DGX)
    across = step_time(GPT_175B, replace(TP8_PP8_V3, tp=16, pp=4), A100_80GB_DGX)
    assert across.tp_comm_s > 5 * inside.tp_comm_s
