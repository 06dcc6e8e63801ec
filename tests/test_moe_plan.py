"""Mixture of experts, planner side (issue 25): total and active parameter counts of published MoE models
against the figures their authors publish, the shape flags, and the configs the planner refuses."""

import json

import pytest

from planner.cli import main
from planner.core.errors import PlannerError
from planner.model.hf_config import SHIPPED, shape_from_hf
from planner.model.presets import get_preset
from planner.model.shapes import ModelShape, MoE, shape_of

#: preset: (total, active, the unit the figures are given in, where they are published). Every published figure
#: is rounded (to 0.1B or 1B), so each count is checked to that precision: |count - figure| <= unit / 2, except
#: where the publisher truncates (`TRUNCATED`): figure <= count < figure + unit.
PUBLISHED_MOE = {
    # Mistral AI, "Mixtral of experts" (blog, 11 Dec 2023): "46.7B total parameters but only uses 12.9B
    # parameters per token" (the paper, Jiang et al. 2024, rounds them to 47B and 13B).
    "mixtral-8x7b": (46.7e9, 12.9e9, 0.1e9),
    # Mistral AI, "Cheaper, Better, Faster, Stronger" (blog, 17 Apr 2024): "39B active parameters out of 141B".
    "mixtral-8x22b": (141e9, 39e9, 1e9),
    # Qwen3-30B-A3B model card: "Number of Parameters: 30.5B in total and 3.3B activated" (truncated: the
    # active count is 3.35B, 8 of 128 experts of 768 in 48 layers + 2 x 151,936 x 2048 embedding and head).
    "qwen3-30b-a3b": (30.5e9, 3.3e9, 0.1e9),
    # Muennighoff et al. 2024, "OLMoE: Open Mixture-of-Experts Language Models", Table 1: 6.9B total, 1.3B active.
    "olmoe-1b-7b": (6.9e9, 1.3e9, 0.1e9),
    # Qwen1.5-MoE-A2.7B model card / Qwen blog (28 Mar 2024): "14.3B parameters in total and 2.7B activated
    # parameters during runtime".
    "qwen1.5-moe-a2.7b": (14.3e9, 2.7e9, 0.1e9),
}

TRUNCATED = {"qwen3-30b-a3b"}

#: Our counts to the parameter, worked by hand from the configs (Mixtral-8x7B: 32 layers x (attention
#: 2 x 4096^2 + 2 x 4096 x 1024 + router 4096 x 8 + 8 experts x 3 x 4096 x 14336 + 2 norms x 4096) + embedding
#: and head 2 x 32000 x 4096 + final norm 4096 = 46,702,792,704, which is also the count of the published
#: safetensors; active: the same with 2 experts per layer instead of 8).
EXACT = {"mixtral-8x7b": (46_702_792_704, 12_879_925_248),
         "qwen3-30b-a3b": (30_532_110_336, 3_353_020_416),
         "olmoe-1b-7b": (6_919_096_320, 1_281_951_744)}


@pytest.mark.parametrize("name", PUBLISHED_MOE)
def test_moe_total_and_active_counts_match_the_published_figures_to_their_precision(name):
    total, active, unit = PUBLISHED_MOE[name]
    shape = get_preset(name).shape
    for ours, published in ((shape.param_count(), total), (shape.active_param_count(), active)):
        if name in TRUNCATED:
            assert published <= ours < published + unit, ours
        else:
            assert abs(ours - published) <= unit / 2, ours


#: The published checkpoints' own parameter counts (the tensors in their safetensors, as the Hugging Face hub
#: totals them; the same figures appear as KerasHub's preset sizes and llama.cpp's GGUF general.parameter_count),
#: and the terms the planner leaves out on purpose (planner.model.hf_config: < 0.01% each).
CHECKPOINT = {
    "mixtral-8x7b": (46_702_792_704, 0),
    "mixtral-8x22b": (140_630_071_296, 0),
    "qwen3-30b-a3b": (30_532_122_624, 48 * 2 * 128),  # q_norm and k_norm over head_dim 128, 48 layers
    "olmoe-1b-7b": (6_919_161_856, 16 * 2 * 2048),  # q_norm and k_norm over the whole width, 16 layers
    "qwen1.5-moe-a2.7b": (14_315_784_192, 24 * 3 * 2048),  # q, k and v biases, 24 layers
}


@pytest.mark.parametrize("name", CHECKPOINT)
def test_moe_totals_are_the_checkpoints_less_only_the_terms_left_out(name):
    count, left_out = CHECKPOINT[name]
    ours = get_preset(name).shape.param_count()
    assert ours + left_out == count
    assert abs(ours / count - 1) < 1e-4  # within 0.01%


@pytest.mark.parametrize("name", EXACT)
def test_moe_counts_to_the_parameter(name):
    shape = get_preset(name).shape
    assert (shape.param_count(), shape.active_param_count()) == EXACT[name]


def test_qwen3_moe_non_embedding_count_matches_its_model_card():
    # Qwen3-30B-A3B model card: "Number of Parameters (Non-Embedding): 29.9B" (rounded to 0.1B).
    assert abs(get_preset("qwen3-30b-a3b").shape.non_embedding_params() - 29.9e9) <= 0.05e9


def test_qwen2_moe_counts_its_shared_expert_and_gate():
    shape = get_preset("qwen1.5-moe-a2.7b").shape
    h = 2048
    assert shape.moe == MoE(60, 4, 1408, shared_experts=1, shared_ffn=5632, shared_gate=True)
    # router h x 60 + 60 experts x 3 h 1408 + shared 3 h 5632 + shared gate h x 1
    assert shape.moe_mlp_params() == h * 60 + 60 * 3 * h * 1408 + 3 * h * 5632 + h
    assert shape.moe_mlp_params(4) == h * 60 + 4 * 3 * h * 1408 + 3 * h * 5632 + h


@pytest.mark.parametrize("name, published", [
    ("phi3-mini", 3.8e9),  # Phi-3-mini model card: 3.8B (Abdin et al. 2024); fused qkv / gate_up: same count
    ("qwen3-8b", 8.2e9),  # Qwen3-8B model card: "Number of Parameters: 8.2B"
])
def test_llama_shaped_dense_families_under_other_model_types(name, published):
    shape = get_preset(name).shape
    assert shape.moe is None and shape.active_param_count() == shape.param_count()
    assert abs(shape.param_count() - published) <= 0.05e9


def test_dense_leading_layers_keep_the_dense_mlp():
    # DeepSeek's first_k_dense_replace: the first k layers have the dense MLP (--ffn), the rest are MoE.
    moe = ModelShape(4, 512, 8, 1000, 128, ffn_hidden=2048, moe=MoE(8, 2, 256, dense_layers=1))
    dense = ModelShape(4, 512, 8, 1000, 128, ffn_hidden=2048)
    assert moe.moe_layers == 3 and moe.dense_layers == 1
    expert_layer = moe.attention_params() + 512 * 8 + 8 * 3 * 512 * 256 + 2 * 512
    assert moe.param_count() == dense.param_count() + 3 * (expert_layer - dense.layer_params())
    assert moe.param_count() - moe.active_param_count() == 3 * 6 * 3 * 512 * 256


def test_expert_parallel_ranks_hold_a_share_of_the_routed_experts():
    shape = get_preset("mixtral-8x7b").shape
    assert shape.layer_params() - shape.layer_params(ep=8) == 7 * shape.expert_params()
    assert shape.routed_expert_params() == 32 * 8 * 3 * 4096 * 14336


def test_moe_shape_flags_give_the_preset_count(capsys):
    flags = ["--layers", "32", "--hidden", "4096", "--heads", "32", "--kv-heads", "8", "--vocab", "32000",
             "--experts", "8", "--top-k", "2", "--expert-ffn", "14336", "--tokens", "1e12", "--json"]
    assert main(["estimate", *flags]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"] == EXACT["mixtral-8x7b"][0] and r["model"]["active_params"] == EXACT["mixtral-8x7b"][1]


@pytest.mark.parametrize("kw, message", [
    ({"experts": 8, "top_k": 9, "expert_ffn": 64}, "--top-k: 9 is more than the 8 experts"),
    ({"experts": 0, "top_k": 1, "expert_ffn": 64}, "--experts: 0 must be a positive integer"),
    ({"experts": 8, "top_k": 2, "expert_ffn": 64, "capacity_factor": 0.5}, "--capacity-factor: 0.5"),
])
def test_bad_moe_shapes_are_one_line(kw, message):
    with pytest.raises(PlannerError, match=message):
        MoE(**kw)


@pytest.mark.parametrize("argv, message", [
    (["--params", "7e9", "--top-k", "2"], "--top-k: a mixture-of-experts flag needs --experts"),
    (["--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "256", "--experts", "4"],
     "--experts: also give --expert-ffn"),
    (["--model", "llama2-7b", "--capacity-factor", "1.25"], "--capacity-factor: 1.25 applies to a mixture-of-experts"),
])
def test_bad_moe_flags_exit_2_with_one_line(capsys, argv, message):
    assert main(["estimate", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_deepseek_v3_is_refused_naming_multi_head_latent_attention(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61}))
    assert main(["estimate", "--hf-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "deepseek_v3" in err and "multi-head latent attention" in err and err.count("\n") == 1


def test_interleaved_dense_and_moe_layers_are_refused(tmp_path):
    cfg = json.loads((SHIPPED / "qwen3-30b-a3b.json").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**cfg, "decoder_sparse_step": 2}))
    with pytest.raises(PlannerError, match="decoder_sparse_step 2"):
        shape_from_hf(path)
    path.write_text(json.dumps({**cfg, "mlp_only_layers": [0, 1]}))
    assert shape_from_hf(path).moe.dense_layers == 2


# ---- compute -----------------------------------------------------------------------------------------------
MIXTRAL_64_H100 = ["--model", "mixtral-8x7b", "--gpu", "h100-sxm", "--gpus", "64", "--fsdp", "full", "--ep", "8",
                   "--tokens", "1e12"]


def estimate_json(capsys, argv):
    assert main(["estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_moe_flops_follow_the_active_parameters(capsys):
    r = estimate_json(capsys, MIXTRAL_64_H100)
    active = EXACT["mixtral-8x7b"][1]
    assert r["model"]["active_params"] == active and r["params"] == EXACT["mixtral-8x7b"][0]
    # 6 N_active D (the router's h x E matmul is in N_active) + PaLM's attention 12 L H Q T per token
    assert r["flops_6nd"] == 6 * active * 1e12
    assert r["flops"] == pytest.approx((6 * active + 12 * 32 * 32 * 128 * 4096) * 1e12, rel=1e-12)
    # MFU on that basis: model FLOPs per step over what the GPUs could do in the predicted step
    t = r["time"]
    assert t["mfu_predicted"] == pytest.approx(
        r["flops"] / 1e12 * t["tokens_per_step"] / (t["step_time_s"] * 989e12 * 64), rel=1e-9)


def test_expert_parallel_all_to_all_within_a_node_by_hand(capsys):
    # Per MoE layer and micro-batch: dispatch + combine, forward and backward = 4 all-to-alls, each of
    # s b x top_k x h x 2 bytes x the dropless load factor 1.25, of which (ep - 1)/ep leaves the rank: 4096 x 2 x
    # 4096 x 2 x 1.25 x 7/8 = 73,400,320 bytes; x 4 x 32 layers = 9.395e9 bytes over NVLink (H100: 900 GB/s both
    # ways, 450e9 one way, at the calibrated link fraction 0.6205) = 33.6 ms.
    from planner.compute.step_time import CALIBRATED

    r = estimate_json(capsys, MIXTRAL_64_H100)
    assert CALIBRATED.link == 0.6205
    assert r["time"]["breakdown_s"]["expert_parallel"] == pytest.approx(4 * 32 * 73_400_320 / (450e9 * 0.6205),
                                                                        rel=1e-9)


def test_expert_parallel_across_nodes_runs_over_the_network(capsys):
    within = estimate_json(capsys, MIXTRAL_64_H100)["time"]["breakdown_s"]["expert_parallel"]
    args = ["--hf-config", str(SHIPPED / "qwen3-30b-a3b.json"), "--gpu", "h100-sxm", "--gpus", "64", "--fsdp", "full",
            "--tokens", "1e12", "--seq-len", "4096"]
    node = estimate_json(capsys, [*args, "--ep", "8"])["time"]["breakdown_s"]["expert_parallel"]
    across = estimate_json(capsys, [*args, "--ep", "16"])["time"]["breakdown_s"]["expert_parallel"]
    assert within > 0 and across > 4 * node  # 50 GB/s per NIC (400 Gb/s) against 450 GB/s NVLink


def test_capacity_factor_sets_the_busiest_experts_load(capsys):
    dropless = estimate_json(capsys, MIXTRAL_64_H100)["time"]["breakdown_s"]["expert_parallel"]
    capped = estimate_json(capsys, [*MIXTRAL_64_H100, "--capacity-factor", "1.0"])["time"]["breakdown_s"]
    assert capped["expert_parallel"] == pytest.approx(dropless / 1.25)


@pytest.mark.parametrize("argv, message", [
    (["--model", "mixtral-8x7b", "--gpus", "64", "--fsdp", "full"], "--tokens: needed for a mixture-of-experts"),
    (["--model", "llama2-7b", "--gpus", "64", "--fsdp", "full", "--ep", "8"], "--ep: 8 expert-parallel ranks need"),
    (["--model", "mixtral-8x7b", "--gpus", "64", "--fsdp", "full", "--ep", "16", "--tokens", "1e12"],
     "--ep: 16 does not divide the model's 8 experts"),
    (["--model", "mixtral-8x7b", "--gpus", "64", "--fsdp", "full", "--ep", "3", "--tokens", "1e12"],
     "--ep: 3 does not divide the 64 data-parallel ranks"),
])
def test_moe_layouts_the_planner_refuses_are_one_line(capsys, argv, message):
    assert main(["estimate", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ---- memory ------------------------------------------------------------------------------------------------
SMALL_MOE = ["--layers", "4", "--hidden", "512", "--heads", "8", "--vocab", "1000", "--seq-len", "256",
             "--experts", "8", "--top-k", "2", "--expert-ffn", "256", "--tokens", "1e9"]


def small_shape(**moe) -> ModelShape:
    return ModelShape(4, 512, 8, 1000, 256, moe=MoE(8, 2, 256, **moe))


def test_ddp_replicates_the_dense_states_and_splits_the_experts_over_ep(capsys):
    # torch-amp (DDP under autocast): fp32 weights 4 + fp32 gradients 4 + AdamW 8 = 16 B/param, nothing
    # partitioned; the routed experts live on one EP rank in ep: 16 x routed / 8 per GPU.
    r = estimate_json(capsys, [*SMALL_MOE, "--gpus", "8", "--ep", "8"])
    shape = small_shape()
    routed = 4 * 8 * 3 * 512 * 256
    assert shape.routed_expert_params() == routed
    assert r["moe"]["expert_states_per_gpu_bytes"] == 16 * routed / 8
    assert r["moe"]["other_states_per_gpu_bytes"] == 16 * (shape.param_count() - routed)


def test_fsdp_shards_the_experts_within_the_expert_group(capsys):
    # FSDP2 (fp32 sharded parameters 4 + fp32 gradients 4 + AdamW 8 = 16 B/param): the experts over ep x
    # dp_shard / ep = all 16 ranks, like every other weight; what EP changes is what FSDP gathers: a block's own
    # 8 / ep experts, not all 8 (torchtitan's dp_shard_mod_ep), as a unit of their own
    shape = small_shape()
    r = estimate_json(capsys, [*SMALL_MOE, "--gpus", "16", "--fsdp", "full", "--ep", "1"])
    assert r["moe"]["expert_states_per_gpu_bytes"] == pytest.approx(16 * shape.routed_expert_params() / 16)
    # one unit per block: at backward-start the root and the last block, bf16
    assert r["memory_per_moment_bytes"]["backward-start"]["weights"] == (shape.root_params() + shape.layer_params()) * 2
    assert "experts-backward" not in r["memory_per_moment_bytes"]
    r = estimate_json(capsys, [*SMALL_MOE, "--gpus", "16", "--fsdp", "full", "--ep", "4"])
    assert r["moe"]["expert_states_per_gpu_bytes"] == pytest.approx(16 * shape.routed_expert_params() / 16)
    experts = 2 * shape.expert_params()  # 8 / ep of them
    other = shape.layer_params(4) - experts  # attention, router, norms: the block's other unit
    moments = r["memory_per_moment_bytes"]
    assert moments["backward-start"]["weights"] == (shape.root_params() + other) * 2  # experts not gathered yet
    # then the experts gathered, and the previous block's other unit prefetched by their pre-backward hook
    assert moments["experts-backward"]["weights"] == (shape.root_params() + 2 * other + experts) * 2
    assert shape.layer_params(1) - shape.layer_params(4) == 6 * 3 * 512 * 256


def test_moe_layer_activations_term_by_term():
    from planner.memory.activations import layer_terms

    h, a = 512, 2
    terms = {t.name: t.bytes for t in layer_terms(small_shape())}
    # dropless: the busiest EP rank gets 1.25 x its mean share of the top-2 dispatched copies
    assert terms["router_probabilities"] == 4 * 8  # fp32 softmax output over E
    assert terms["topk_indices_and_weights"] == (8 + 4) * 2  # int64 indices, fp32 weights
    assert terms["dispatched_tokens"] == 2 * 1.25 * a * h
    assert terms["expert_intermediates"] == 2 * 1.25 * 3 * a * 256  # gate, up, product per dispatched copy
    assert terms["expert_outputs_for_combine"] == 2 * 1.25 * a * h
    assert "gate_up_product" not in terms
    capped = {t.name: t.bytes for t in layer_terms(small_shape(capacity_factor=1.0))}
    assert capped["dispatched_tokens"] == 2 * 1.0 * a * h  # the buffers padded to the capacity, no more


def test_leading_dense_layers_keep_the_dense_blocks_activations():
    from dataclasses import replace

    from planner.memory.activations import per_layer_bytes, stored_bytes

    shape = small_shape(dense_layers=1)
    dense = replace(shape, moe=None)
    assert stored_bytes(shape, 1) == pytest.approx(3 * per_layer_bytes(shape, 1) + per_layer_bytes(dense, 1))


def test_all_to_all_buffers_send_and_receive_one_layers_dispatch(capsys):
    # 2 buffers x s b x top_k x load factor x h x 2 bytes = 2 x 256 x 2 x 1.25 x 512 x 2
    r = estimate_json(capsys, [*SMALL_MOE, "--gpus", "16", "--fsdp", "full", "--ep", "4"])
    assert r["moe"]["all_to_all_buffer_bytes"] == 2 * 256 * 2 * 1.25 * 512 * 2
    assert estimate_json(capsys, [*SMALL_MOE, "--gpus", "16", "--fsdp", "full"])["moe"]["all_to_all_buffer_bytes"] == 0


def test_ep_is_taken_from_the_shard_group_under_hybrid_fsdp(capsys):
    argv = [*SMALL_MOE, "--gpus", "16", "--fsdp", "hybrid", "--sharding-factor", "4", "--ep", "8"]
    assert main(["estimate", *argv]) == 2
    assert "--ep: 8 does not divide the 4 data-parallel ranks it is taken from (the shard group)" in capsys.readouterr().err


def test_op_checkpointing_is_refused_for_an_moe_layer(capsys):
    assert main(["estimate", *SMALL_MOE, "--gpus", "1", "--checkpointing", "op"]) == 2
    assert "--checkpointing op: planned for our dense LLaMA block, not an MoE layer" in capsys.readouterr().err


# ---- the estimate as printed, and what emit and verify refuse ----------------------------------------------
def test_estimate_prints_total_and_active_parameters_and_the_ep_figures(capsys):
    assert main(["estimate", *MIXTRAL_64_H100]) == 0
    out = capsys.readouterr().out
    assert "Model      46.7B parameters (46,702,792,704)" in out
    assert "MoE: 8 experts (ffn 14336), top-2, dropless" in out
    assert "Active     12.9B parameters per token (12,879,925,248, 27.6% of the total)" in out
    assert "fsdp-full (shard degree 64, expert parallel 8)" in out
    assert "MoE        1 of 8 experts per GPU (ep 8)" in out
    assert "FLOPs, 6ND (N active)                                   7.728e+22" in out  # 6 x 12.88e9 x 1e12
    assert "expert parallel 0.0336" in out  # test_expert_parallel_all_to_all_within_a_node_by_hand


def test_emit_writes_an_moe_model_and_its_expert_parallel_layout(tmp_path):
    from planner.core.schema import load_config

    out = tmp_path / "job"
    assert main(["emit", "--out", str(out), *MIXTRAL_64_H100]) == 0
    cfg = load_config(out / "run.yaml")
    m, p = cfg.model, cfg.parallel
    assert (m.experts, m.top_k, m.expert_ffn, m.shared_experts, m.dense_layers) == (8, 2, 14336, 0, 0)
    assert (p.engine, p.fsdp_mode, p.ep, p.world) == ("fsdp", "full", 8, 64)
    assert shape_of(m).param_count() == get_preset("mixtral-8x7b").shape.param_count()  # the trainer builds the plan's


@pytest.mark.parametrize("argv, message", [
    (["--model", "mixtral-8x7b", "--gpus", "64", "--zero", "3"], "--zero: the trainer runs an MoE model under FSDP2"),
    (["--model", "mixtral-8x7b", "--gpus", "64", "--fsdp", "full", "--pp", "2"], "--pp: 2: pipeline stages of an MoE"),
    ([*SMALL_MOE, "--gpus", "4", "--fsdp", "full", "--capacity-factor", "1.25"], "--capacity-factor: 1.25: the "
     "trainer routes dropless"),
])
def test_emit_refuses_what_the_trainer_does_not_run_for_moe_in_one_line(capsys, tmp_path, argv, message):
    out = tmp_path / "job"
    assert main(["emit", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_layout_with_ep_runs_under_fsdp2_with_tp_for_attention():
    from planner.core.parallel import ParallelPlan

    ParallelPlan.from_flags(64, fsdp="full", ep=8).check_runnable()  # the trainer runs it (tests/test_moe_train.py)
    ParallelPlan.from_flags(64, fsdp="full", ep=8, tp=2).check_runnable()
    for kw, message in [({"zero": 3}, "parallel.ep: 8: expert parallelism runs composed with FSDP2"),
                        ({"fsdp": "full", "pp": 2}, "parallel.ep: 8 with parallel.pp 2: expert parallelism inside")]:
        with pytest.raises(PlannerError, match=message):
            ParallelPlan.from_flags(64, ep=8, **kw).check_runnable()


def test_pipeline_stages_hold_the_dense_layers_where_they_sit():
    from planner.core.parallel import ParallelPlan
    from planner.memory import pipeline

    shape = ModelShape(8, 512, 8, 1000, 256, ffn_hidden=2048, moe=MoE(8, 2, 256, dense_layers=3))
    plan = ParallelPlan(engine="fsdp", world=4, pp=4, micro_batch=1, grad_accum=4)
    shares = pipeline.shares(shape.layers, plan, shape.dense_layers)
    assert [s.layers for s in shares] == [2, 2, 2, 2] and [s.dense_layers for s in shares] == [2, 1, 0, 0]
    assert sum(pipeline.stage_params(shape, s) for s in shares) == shape.param_count()  # untied: nothing twice
    assert pipeline.stage_shape(shape, shares[0]).routed_expert_params() == 0  # two dense layers, no experts


def test_what_is_planned_for_dense_models_only_refuses_moe_in_one_line(capsys):
    assert main(["estimate", *SMALL_MOE, "--gpus", "1", "--finetune", "lora"]) == 2
    message = "--finetune lora: adapters are planned on dense"
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compare_ranks_the_strategies_of_an_moe_model_at_its_ep(capsys):
    assert main(["compare", *MIXTRAL_64_H100, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    best = next(r for r in rows if r.get("best"))
    # ZeRO-3 and FSDP full move the same collectives; DeepSpeed's bf16 gradients halve the reduce-scatter's bytes,
    # and overlapped traffic still costs a share of its time (`Efficiency.overlap`), so ZeRO-3 may lead by that
    assert best["strategy"] in ("fsdp-full", "zero3") and best["fits"]
    fsdp = next(r for r in rows if r["strategy"] == "fsdp-full" and r.get("checkpointing") == best.get("checkpointing"))
    assert fsdp["fits"] and fsdp["step_time_s"] <= 1.05 * best["step_time_s"]


def test_a_capacity_factors_padding_is_hardware_not_model_flops():
    from planner.compute.flops import hardware_flops_per_token, model_flops_per_token

    dropless, capped = small_shape(), small_shape(capacity_factor=1.5)
    n = dropless.param_count()
    assert model_flops_per_token(n, capped) == model_flops_per_token(n, dropless)
    # 6 x (c - 1) x top_k x one expert x MoE layers = 6 x 0.5 x 2 x 3 x 512 x 256 x 4
    padding = hardware_flops_per_token(n, capped, "none") - hardware_flops_per_token(n, dropless, "none")
    assert padding == 6 * 0.5 * 2 * 3 * 512 * 256 * 4


def test_verify_refuses_an_moe_layout_the_trainer_does_not_run_in_one_line(capsys):
    assert main(["verify", "--model", "mixtral-8x7b", "--gpus", "8", "--fsdp", "full", "--pp", "2",
                 "--tokens", "1e12"]) == 2
    err = capsys.readouterr().err
    assert "pipeline stages of an MoE model are not run yet" in err and err.count("\n") == 1


def test_search_explores_expert_parallelism_as_the_trainer_runs_it():
    from planner.plan.request import EstimateRequest
    from planner.plan.search import search

    found = search(EstimateRequest.from_flags(model="mixtral-8x7b", gpus=64, gpu="h100-sxm", tokens=1e12), top=100)
    rows = found["top"]
    assert {row["ep"] for row in rows} == {1, 2, 4, 8}  # every degree dividing the 8 experts and the shard ranks
    assert all(row["layout"]["engine"] == "fsdp" and row["pp"] == 1 for row in rows if row["ep"] > 1)
    # the busiest EP rank runs 1.25x the mean (dropless margin) and adds all-to-alls: at the same micro-batch and
    # checkpointing, EP 8 is slower than EP 1 and holds less
    same = [next(r for r in rows if r["ep"] == ep and r["micro_batch"] == 4 and r["strategy"] == "fsdp-full"
                 and r["checkpointing"] == "full") for ep in (1, 8)]
    assert same[1]["step_time_s"] > same[0]["step_time_s"]
    assert same[1]["memory_per_gpu_bytes"] < same[0]["memory_per_gpu_bytes"]
