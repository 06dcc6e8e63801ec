"""The planner's ZeRO-2/3 model-state figures against DeepSpeed's own estimators.

DeepSpeed: `deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs` and
`deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs` (the functions behind the
`..._all_cold` printers). GPU figures must agree exactly. CPU figures agree up to DeepSpeed's
`additional_buffer_factor` (1.5), which the planner shows separately rather than folding in,
except for ZeRO-2 offload beyond 4 GPUs, where DeepSpeed also counts the fp32 copy of the whole
model each rank materialises on CPU during initialisation (4 B x params x GPUs, transient).

One deliberate difference: ZeRO-3 without offload. DeepSpeed's estimator counts 18N/gpus and
leaves out the 16-bit parameter shard each rank holds (2N/gpus), which its own optimizer-offload
branch does count; the planner counts it (20N/gpus) and shows DeepSpeed's figure beside its own.
"""

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
stage_1_and_2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
stage3 = pytest.importorskip("deepspeed.runtime.zero.stage3")

from planner.core.parallel import ParallelPlan  # noqa: E402
from planner.memory import model_states as memory  # noqa: E402
from planner.model.presets import PRESETS  # noqa: E402

BUFFER_FACTOR = 1.5  # DeepSpeed's default additional_buffer_factor
SHAPES = [PRESETS["llama2-7b"].shape, PRESETS["gpt3-13b"].shape, PRESETS["llama2-70b"].shape]
LAYOUTS = [(1, 1), (8, 1), (8, 4), (4, 16)]  # (gpus per node, nodes)


def planner_states(shape, stage, gpus, offload):
    terms = memory.state_terms("bf16-mixed", "adamw", "deepspeed", shape)
    strategy = ParallelPlan.from_flags(gpus, zero=stage, offload=offload)
    return memory.model_states(shape.param_count(), terms, strategy, shape, "deepspeed")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.param_count() / 1e9:.1f}B")
@pytest.mark.parametrize("per_node, nodes", LAYOUTS)
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_gpu_bytes_equal_deepspeed(shape, per_node, nodes, offload):
    n = shape.param_count()
    cpu, gpu = stage_1_and_2.estimate_zero2_model_states_mem_needs(n, per_node, nodes, offload, BUFFER_FACTOR)
    ours = planner_states(shape, 2, per_node * nodes, "optimizer" if offload else "none")
    assert ours.gpu_total == pytest.approx(gpu, abs=2)  # DeepSpeed truncates with int()
    shown = memory.deepspeed_estimator_gpu_bytes(n, 0, 2, per_node * nodes, "optimizer" if offload else "none")
    assert shown == pytest.approx(gpu, abs=2)
    if offload and per_node * nodes <= 4:
        assert ours.cpu_total * per_node * BUFFER_FACTOR == pytest.approx(cpu, rel=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.param_count() / 1e9:.1f}B")
@pytest.mark.parametrize("per_node, nodes", LAYOUTS)
@pytest.mark.parametrize("offload", ["none", "optimizer", "all"])
def test_zero3_gpu_and_cpu_bytes_equal_deepspeed(shape, per_node, nodes, offload):
    n, largest = shape.param_count(), shape.largest_layer_params()
    cpu, gpu, _ = stage3.estimate_zero3_model_states_mem_needs(
        n, largest, per_node, nodes, cpu_offload=offload != "none", cpu_offload_params=offload == "all",
        zero_init=True, additional_buffer_factor=BUFFER_FACTOR)
    ours = planner_states(shape, 3, per_node * nodes, offload)
    sixteen_bit_shard = 2 * n / (per_node * nodes) if offload == "none" else 0
    assert ours.gpu_total == pytest.approx(gpu + sixteen_bit_shard, abs=2)
    assert memory.deepspeed_estimator_gpu_bytes(n, largest, 3, per_node * nodes, offload) == pytest.approx(gpu, abs=2)
    if offload != "none":
        assert ours.cpu_total * per_node * BUFFER_FACTOR == pytest.approx(cpu, rel=1e-9)


def test_deepspeed_docs_zero2_cold_2851m_params_one_node_of_8():
    # DeepSpeed's docs/code/memory.rst example (P 2,851M, 1 node x 8 GPUs, no offload): 11.28 GiB with
    # the current 18-byte code (the docs still print 15.93 GiB, the pre-2024 formula).
    terms = memory.state_terms("bf16-mixed", "adamw", "deepspeed")
    ours = memory.model_states(2851e6, terms, ParallelPlan.from_flags(8, zero=2))
    assert ours.gpu_total / 2**30 == pytest.approx(11.28, abs=0.005)
