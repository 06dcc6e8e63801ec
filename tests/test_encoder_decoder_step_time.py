"""The encoder-decoder's step time (`planner.compute.encoder_decoder_step_time`): the bytes our T5 moves, counted
op by op on the whole model, against the planner's terms; and what the estimate says of it."""

import json
from dataclasses import replace

import pytest
import torch

from planner.cli import main as planner_main
from planner.compute.encoder_decoder_step_time import encoder_decoder_step_time
from planner.compute.step_time import EAGER_TORCH, PROBED, Hardware
from planner.core.parallel import ParallelPlan
from planner.core.schema import ModelConfig
from planner.memory.pipeline import shares_of
from planner.model.hf_config import SHIPPED, shape_from_hf
from planner.model.shapes import shape_of
from pretrain.encoder_decoder import EncoderDecoder
from pretrain.memory_probe import MemoryTrafficCounter

#: one byte a second, so the memory-bound seconds are the bytes
BYTES = Hardware(peak_flops=1e12, hbm_bytes_per_s=1.0, nvlink_bytes_per_s=1e9, network_bytes_per_s=1e9,
                 gpus_per_node=8)


def counted_bytes(cfg: ModelConfig, micro_batch: int, dtype: torch.dtype) -> int:
    """Bytes the non-matmul aten ops of one forward and backward of our whole T5 move."""
    shape = shape_of(cfg)
    torch.set_default_dtype(dtype)
    try:
        model = EncoderDecoder(cfg)
        inputs = torch.randint(0, cfg.vocab, (micro_batch, shape.seq_len))
        targets = torch.randint(0, cfg.vocab, (micro_batch, shape.n_target_len))
        with MemoryTrafficCounter() as counter:
            model(inputs, targets).backward()
    finally:
        torch.set_default_dtype(torch.float32)
    return counter.bytes


def planned_bytes(cfg: ModelConfig, micro_batch: int, width: int) -> float:
    kernels = replace(EAGER_TORCH, activation_bytes=width)
    plan = ParallelPlan(micro_batch=micro_batch, world=1)
    return encoder_decoder_step_time(shape_of(cfg), plan, BYTES, PROBED, kernels=kernels).memory_s


def t5(layers: int, mlp: str, **fields) -> ModelConfig:
    return ModelConfig(layers=layers, hidden=128, heads=4, ffn_hidden=256, vocab=512, seq_len=64,
                       arch="encoder-decoder", mlp=mlp, **fields)


@pytest.mark.parametrize(("mlp", "dtype", "micro_batch"), [("relu", torch.float32, 2), ("geglu", torch.bfloat16, 3)])
def test_an_encoder_block_and_a_decoder_block_more_move_the_bytes_the_planner_prices(mlp, dtype, micro_batch):
    # counted on the whole model, so what passes between blocks (the bias's and the encoder output's gradients
    # added up) is in the count; d_kv apart from hidden / heads, as T5's can be
    more = counted_bytes(t5(3, mlp, head_dim=48), micro_batch, dtype) - counted_bytes(t5(2, mlp, head_dim=48),
                                                                                      micro_batch, dtype)
    planned = planned_bytes(t5(3, mlp, head_dim=48), micro_batch, dtype.itemsize) \
        - planned_bytes(t5(2, mlp, head_dim=48), micro_batch, dtype.itemsize)
    assert planned == pytest.approx(more, rel=0.01)


def test_the_whole_model_moves_the_bytes_the_planner_prices():
    # the blocks, and before and after them the embeddings, the biases, the final norms and the loss
    cfg = ModelConfig(layers=2, hidden=256, heads=4, ffn_hidden=1024, vocab=2048, seq_len=128,
                      arch="encoder-decoder", mlp="relu")
    assert planned_bytes(cfg, 4, 4) == pytest.approx(counted_bytes(cfg, 4, torch.float32), rel=0.03)


def test_a_pipeline_runs_at_its_slowest_stages_pace_the_encoders_at_t5s_lengths():
    # 512 inputs and 114 targets: the encoder's blocks carry the most work, so the two stages do not halve the step
    shape = shape_from_hf(SHIPPED / "t5-base.json")
    h100 = Hardware(989e12, 3.35e12, 450e9, 50e9, 8)
    whole = encoder_decoder_step_time(shape, ParallelPlan(micro_batch=4, world=1, grad_accum=8), h100, PROBED,
                                      kernels=EAGER_TORCH)
    piped = ParallelPlan(micro_batch=4, world=2, pp=2, grad_accum=8)
    staged = encoder_decoder_step_time(shape, piped, h100, PROBED, kernels=EAGER_TORCH)
    encoder_stage, decoder_stage = shares_of(shape, piped)
    assert (encoder_stage.decoder_layers, decoder_stage.decoder_layers) == (0, 12)
    assert whole.compute_s / 2 < staged.compute_s < whole.compute_s


def test_the_estimate_of_an_encoder_decoder_predicts_its_step_time_and_says_so(capsys):
    code = planner_main(["estimate", "--model", "t5-base", "--gpus", "8", "--gpu", "a100-80gb", "--tokens", "34e9",
                         "--micro-batch", "8", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["mfu_source"] == "predicted" and r["mfu_used"] == r["mfu_predicted"]
    assert r["time"]["model"].startswith("planner.compute.encoder_decoder_step_time")
    assert r["step_time_s"] == pytest.approx(sum(r["time"]["breakdown_s"].values()))


def test_the_layout_search_ranks_an_encoder_decoders_layouts_by_time_without_recomputation(capsys):
    code = planner_main(["compare", "--model", "t5-base", "--gpu", "a100-80gb", "--gpus", "8", "--tokens", "34e9",
                         "--search", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["explored"] > 100 and len(r["top"]) == 10
    assert {row["checkpointing"] for row in r["top"]} == {"none"}
    speeds = [row["tokens_per_s_per_gpu"] for row in r["top"]]
    assert speeds == sorted(speeds, reverse=True)


def test_tensor_parallel_traffic_by_hand_includes_each_cross_attentions_gather_of_the_encoder_output():
    # t5-base (12 + 12 blocks, h 768, 512 inputs, 114 targets) at TP 2, micro-batch 4, bf16, one micro-batch: an
    # encoder block gathers and scatters b s h twice forward and twice backward (4 all-reduce equivalents), a
    # decoder block its three sub-layers' b t h (6) and the encoder's output b s h once (gathered forward, its
    # gradient scattered backward); a ring all-reduce of n bytes over 2 ranks sends n, here at 450 GB/s x 0.5
    shape = shape_from_hf(SHIPPED / "t5-base.json")
    hw = Hardware(989e12, 3.35e12, 450e9, 50e9, 8)
    t = encoder_decoder_step_time(shape, ParallelPlan(engine="fsdp", micro_batch=4, world=2, tp=2), hw,
                                  replace(PROBED, link=0.5), kernels=EAGER_TORCH)
    inputs, targets = 2 * 4 * 512 * 768, 2 * 4 * 114 * 768  # bytes of b s h and b t h in bf16
    by_hand = (12 * 4 * inputs + 12 * (6 * targets + inputs)) / (450e9 * 0.5)
    assert t.tp_comm_s == pytest.approx(by_hand, rel=1e-12)
