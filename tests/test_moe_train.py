"""Mixture of experts in the trainer (issue 25, item 4): the MoE block on one process, expert parallelism EP 2 x
FSDP 2 on 4 gloo processes against one process on the same batches, exact resume, the planner's per-rank expert
bytes and MoE activations against what the trainer holds, and the emit -> launch -> train round trip.

The model: 2 layers, h 64, 4 experts of width 256, top-2 (`MOE`). One process with micro-batch 8 sees the 8
sequences the 4 data-parallel ranks (micro-batch 2 each) see together, and draws the same weights (each from its
name and the seed), so the routing is the same up to bf16 rounding.
"""

import json
from dataclasses import replace

import pytest
import torch

from planner.core.parallel import ParallelPlan
from planner.core.schema import ModelConfig
from planner.memory import activations
from planner.memory import model_states as memory
from planner.model.shapes import shape_of
from pretrain.memory_probe import SavedTensorCounter
from pretrain.model import Transformer
from tests.conftest import run_cli
from tests.test_emit_launch import TINY_SHAPE, emit, launch
from tests.test_pretrain_runs import run_train, shards, summary  # noqa: F401 (fixture)

MOE = ["model.experts=4", "model.top_k=2"]
EP2_FSDP2 = ["parallel.engine=fsdp", "parallel.ep=2", "parallel.micro_batch=2"]  # 4 processes: shard 4 = 2 x ep 2
COMMON = ["optim.lr=0.01", "optim.warmup_steps=2", "train.steps=10", "train.checkpoint_every=5", *MOE]


def tracked(tmp) -> list[str]:
    return [f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=moe"]


def metric(tmp, key: str) -> list[float]:
    """A metric's history, step by step, from the run's MLflow store (one run per store here)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("moe").experiment_id])[0]
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def one(shards, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("one")
    r = run_train(tmp, [f"data.train={shards / 'train'}", f"out_dir={tmp / 'run'}", *COMMON, *tracked(tmp),
                        "parallel.micro_batch=8"])
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, summary(tmp / "run")


@pytest.fixture(scope="module")
def ep(shards, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("ep")
    r = run_train(tmp, [f"data.train={shards / 'train'}", f"out_dir={tmp / 'run'}", *COMMON, *tracked(tmp), *EP2_FSDP2],
                  nproc=4)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, summary(tmp / "run")


def test_a_tiny_moe_trains_on_one_process_and_logs_its_balancing_loss(one):
    tmp, s = one
    losses = [loss for _, loss in s["losses"]]
    assert losses[-1] < losses[0] - 1.0  # 5.57 (ln 256) falls to 4.29 in 10 steps
    assert [step for step, _ in s["aux_losses"]] == list(range(1, 11))
    logged = metric(tmp, "aux_loss")
    assert logged == pytest.approx([aux for _, aux in s["aux_losses"]])
    assert all(0.9 < aux < 1.5 for aux in logged)  # E x sum f_e P_e: 1 when balanced (measured 1.000-1.012)


@pytest.mark.slow
def test_ep2_fsdp2_losses_match_one_process_on_the_same_batches(one, ep):
    (one_tmp, single), (ep_tmp, sharded) = one, ep
    assert [step for step, _ in sharded["losses"]] == list(range(1, 11))
    for (_, ep_loss), (_, one_loss) in zip(sharded["losses"], single["losses"], strict=True):
        assert ep_loss == pytest.approx(one_loss, rel=3e-3)  # bf16 tolerance; measured within 1.8e-3
    # the gradient norm before any update, the experts' included: a wrongly averaged expert gradient shows here
    # (AdamW would hide it from the losses); measured 8e-5 apart, 3.6% with the experts averaged over 2 ranks, not 4
    assert metric(ep_tmp, "grad_norm")[0] == pytest.approx(metric(one_tmp, "grad_norm")[0], rel=2e-3)
    assert sharded["tokens_seen"] == 10 * 8 * 64


EP2_TP2 = ["parallel.engine=fsdp", "parallel.ep=2", "parallel.tp=2", "parallel.micro_batch=4"]  # 4 processes


@pytest.mark.slow
def test_ep2_with_tp2_for_attention_trains_like_one_process_and_holds_the_planners_states(one, shards, tmp_path):  # noqa: F811
    # TP 2 x (FSDP 2 = EP 2): attention split over TP; every TP rank routes the whole sequence (its MoE layer whole)
    r = run_train(tmp_path, [f"data.train={shards / 'train'}", f"out_dir={tmp_path / 'run'}", *COMMON,
                             "tracking.enabled=false", *EP2_TP2], nproc=4)
    assert r.returncode == 0, r.stderr[-3000:]
    s, (_, single) = summary(tmp_path / "run"), one
    for (_, loss), (_, one_loss) in zip(s["losses"], single["losses"], strict=True):
        assert loss == pytest.approx(one_loss, rel=3e-3)  # measured within 1.25e-3
    assert s["model_state_bytes_measured"] == s["model_state_bytes_predicted"]  # the MoE MLPs whole on each TP rank
    assert sum(s["expert_state_bytes_measured"].values()) == s["expert_state_bytes_predicted"] == 2 * 4 * 3 * 64 * 256 / 2 * 16
    # activations at the mean load (the planner's figure is the busiest rank's, 1.25x): measured 1.011
    shape = shape_of(ModelConfig(experts=4, top_k=2))
    mean = replace(shape, moe=replace(shape.moe, capacity_factor=1.0))
    kw = {"regime": "16bit", "tp": 2, "sequence_parallel": True, "flash_attention": True}
    predicted = activations.stored_bytes(mean, 4, **kw) + activations.head_bytes(mean, 4, "16bit", 2)
    assert predicted == pytest.approx(s["activation_bytes_measured"], rel=0.05)


@pytest.mark.slow
def test_resume_after_a_crash_reproduces_the_ep_run(ep, shards, tmp_path):  # noqa: F811
    _, straight = ep
    args = [f"data.train={shards / 'train'}", f"out_dir={tmp_path / 'b'}", "tracking.enabled=false", *COMMON,
            *EP2_FSDP2]
    crashed = run_train(tmp_path, args, nproc=4, env={"PRETRAIN_FAIL_AFTER_STEP": "7"})
    assert crashed.returncode != 0 and (tmp_path / "b/checkpoints/latest").read_text().strip() == "step_00000005"
    resumed = run_train(tmp_path, args, nproc=4)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = summary(tmp_path / "b")
    assert again["losses"] == straight["losses"] and again["aux_losses"] == straight["aux_losses"]


@pytest.mark.slow
def test_each_ranks_expert_states_are_the_planners_to_the_byte(ep):
    _, s = ep
    shape = shape_of(ModelConfig(experts=4, top_k=2))
    plan = ParallelPlan(engine="fsdp", world=4, ep=2, micro_batch=2)
    terms = memory.state_terms("bf16-mixed", "adamw", "fsdp", shape)
    planned = memory.model_states(shape.param_count(), terms, plan, shape, "fsdp", at_step=True).experts_gpu
    # 2 layers x 4 experts x 3 x 64 x 256 weights, E / ep = 2 on each EP rank, FSDP-sharded over the 2 ranks
    # holding the same experts; fp32 master weights, fp32 gradients and AdamW's two fp32 states: 16 bytes each
    assert planned == 2 * 4 * 3 * 64 * 256 / 2 / 2 * 16 == 1_572_864
    measured = s["expert_state_bytes_measured"]
    assert measured == {"weights": 0, "master_weights": 393_216, "gradients": 393_216, "optimizer": 786_432}
    assert sum(measured.values()) == planned == s["expert_state_bytes_predicted"]
    assert s["expert_state_bytes_per_rank"] == [planned] * 4  # each of the 4 ranks its own experts' share
    # and every model state the rank holds (experts and the rest, the latter sharded over all 4 ranks)
    assert s["model_state_bytes_measured"] == s["model_state_bytes_predicted"]


def test_one_process_holds_the_planners_expert_states(one):
    _, s = one  # fp32 weights, gradients and AdamW states of all 2 x 4 experts (autocast over fp32 weights)
    assert sum(s["expert_state_bytes_measured"].values()) == s["expert_state_bytes_predicted"] == 2 * 4 * 3 * 64 * 256 * 16


@pytest.mark.slow
def test_hybrid_sharding_with_ep_trains_like_one_process_and_holds_the_planners_states(one, shards, tmp_path):  # noqa: F811
    # replicate 2 x shard 2, the EP group the whole shard group: each rank all of its 2 experts (FSDP over 1 rank)
    _, single = one
    r = run_train(tmp_path, [f"data.train={shards / 'train'}", f"out_dir={tmp_path / 'run'}", "tracking.enabled=false",
                             *COMMON, *EP2_FSDP2, "parallel.fsdp_mode=hybrid", "parallel.dp_shard=2"], nproc=4)
    assert r.returncode == 0, r.stderr[-3000:]
    s = summary(tmp_path / "run")
    for (_, loss), (_, one_loss) in zip(s["losses"], single["losses"], strict=True):
        assert loss == pytest.approx(one_loss, rel=3e-3)  # measured within 1.4e-3
    assert sum(s["expert_state_bytes_measured"].values()) == s["expert_state_bytes_predicted"] == 2 * 4 * 3 * 64 * 256 / 2 * 16
    assert s["model_state_bytes_measured"] == s["model_state_bytes_predicted"]


@pytest.mark.parametrize("regime, shared, dense", [("16bit", 0, 0), ("16bit", 1, 1), ("fp32", 2, 0),
                                                   ("autocast", 0, 0), ("autocast", 1, 0)])
def test_moe_block_activations_are_the_planners(regime, shared, dense):
    # real tensors (the routing needs data): what one forward saves for backward against the planner's terms, at
    # the mean load (the planner plans for the busiest expert: 1.25 x the mean when dropless)
    cfg = ModelConfig(layers=3, hidden=128, heads=4, vocab=256, seq_len=64, experts=8, top_k=2, shared_experts=shared,
                      dense_layers=dense)
    torch.set_default_dtype(torch.bfloat16 if regime == "16bit" else torch.float32)
    try:
        model = Transformer(cfg, seed=0)
    finally:
        torch.set_default_dtype(torch.float32)
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    counter = SavedTensorCounter(model)
    with counter.count(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=regime == "autocast"):
        model(tokens, tokens)
    shape = shape_of(cfg)
    mean_load = replace(shape, moe=replace(shape.moe, capacity_factor=1.0))
    predicted = activations.stored_bytes(mean_load, 2, regime=regime) + activations.head_bytes(mean_load, 2, regime)
    assert predicted == pytest.approx(counter.bytes, rel=0.05)
    # in fact equal but for each MoE layer's per-batch tensors of E elements (counts, mean probabilities: < 100 B)
    assert 0 <= counter.bytes - predicted < 100 * shape.moe_layers


def test_the_trainers_moe_model_has_the_planners_parameter_count():
    for moe in ({"experts": 4}, {"experts": 8, "top_k": 1, "expert_ffn": 96, "shared_experts": 2, "shared_ffn": 64,
                                 "dense_layers": 1}):
        cfg = ModelConfig(layers=3, **moe)
        assert Transformer(cfg).param_count() == shape_of(cfg).param_count()


def test_evaluation_is_cross_entropy_alone_and_training_adds_the_balancing_loss():
    cfg = ModelConfig(experts=4, router_aux_loss_coef=0.5)
    model = Transformer(cfg, seed=1)
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        ce = model(tokens, tokens)
        model.train()
        assert float(model(tokens, tokens)) == pytest.approx(float(ce) + 0.5 * float(model.aux_loss()))


def test_full_checkpointing_leaves_the_moe_gradients_unchanged():
    cfg = ModelConfig(layers=2, experts=4, shared_experts=1)
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    grads = []
    for policy in ("none", "full"):
        model = Transformer(cfg, activation_checkpointing=policy, seed=3)
        model(tokens, tokens).backward()  # the balancing loss included: its graph is recomputed too
        grads.append([w.grad for w in model.parameters()])
    for reference, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, reference, rtol=1e-5, atol=1e-6)


def test_the_balancing_loss_moves_probability_off_an_overloaded_expert():
    from pretrain.model import MoE

    torch.manual_seed(0)
    moe = MoE(hidden=16, experts=4, top_k=1, expert_ffn=8, shared_ffn=0)
    for p in moe.experts.parameters():
        torch.nn.init.normal_(p, std=0.02)
    common = torch.ones(16)
    x = common + 0.1 * torch.randn(1, 256, 16)
    with torch.no_grad():  # every token prefers expert 0 (logit ~1.6 against 0), with probability ~0.6
        moe.router.weight.zero_()
        moe.router.weight[0] = 0.1 * common
    moe(x)
    before, share = moe.aux_loss.detach(), moe.router(x).softmax(-1).mean((0, 1))[0]
    assert before > 2  # E x f_0 P_0 with f_0 = 1: well above the balanced 1
    moe.aux_loss.backward()  # the balancing loss alone, one plain gradient step on the router
    with torch.no_grad():
        moe.router.weight -= 1.0 * moe.router.weight.grad
    moe(x)
    assert moe.router(x).softmax(-1).mean((0, 1))[0] < share and moe.aux_loss < before


@pytest.mark.parametrize("overrides, message", [
    (["parallel.engine=ddp", "parallel.ep=2"], "parallel.ep: 2: expert parallelism runs composed with FSDP2"),
    (["parallel.engine=fsdp", "parallel.ep=3"], "parallel.ep: 3 does not divide model.experts 4"),
    (["parallel.engine=fsdp", "parallel.pp=2", "parallel.grad_accum=2"], "parallel.pp: pipeline stages of an MoE model"),
    (["model.capacity_factor=1.25"], "model.capacity_factor: 1.25: the trainer routes dropless"),
    (["parallel.engine=deepspeed", "parallel.zero_stage=2"], "parallel.engine: deepspeed does not run the MoE layer"),
])
def test_an_moe_layout_the_trainer_does_not_run_is_refused_at_load(overrides, message):
    r = run_cli("data.train=x", *MOE, *overrides, module="pretrain.train")
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.slow
def test_round_trip_emit_launch_train_an_expert_parallel_layout(shards, tmp_path):  # noqa: F811
    # planner emit -> launch preflight -> pretrain EP 2 x FSDP 2 on 4 CPU processes for 3 steps
    out = tmp_path / "emit"
    assert emit(out, *TINY_SHAPE, "--experts", "4", "--top-k", "2", "--expert-ffn", "128", "--gpus", "4",
                "--gpus-per-node", "4", "--fsdp", "full", "--ep", "2", "--micro-batch", "2", "--batch-tokens", "512",
                "--tokens", "1536", "--data", str(shards / "train"), "--precision", "fp32") == 0
    r = launch("local", str(out / "run.yaml"), "--nproc", "4", "tracking.enabled=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "runs/run/summary.json").read_text())
    assert s["steps"] == 3 and s["tokens_seen"] == 1536 and len(s["aux_losses"]) == 3
    assert sum(s["expert_state_bytes_measured"].values()) == s["expert_state_bytes_predicted"]
