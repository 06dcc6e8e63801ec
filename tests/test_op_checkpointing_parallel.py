"""torchtitan's op-level selective checkpointing under tensor and pipeline parallelism, on 2 gloo processes each.

TP 2 (DTensor, sequence parallel, inside FSDP2) and PP 2 (1F1B, two micro-batches): the op policy trains the
losses of the same run without checkpointing exactly (the recompute is the forward again), and what its first
forward leaves alive on each rank (the selective cache, autograd's saved tensors; a DTensor by its local shard; a
stage's received input, not its output) is `planner.memory.activations`' figure to the byte but for the 4-byte
loss and its weight. The dense decoder only: an MoE model's op policy stays refused (`tests/test_moe_plan.py`).
"""

import pytest

from tests.test_pretrain_runs import run_train, shards, summary  # noqa: F401 (fixture)

#: 4 layers (2 a stage), untied embeddings (TP and PP both need them), 3 steps of 4 sequences x 64 tokens a rank
COMMON = ["tracking.enabled=false", "train.steps=3", "optim.lr=0.01", "optim.warmup_steps=2", "parallel.micro_batch=4",
          "train.checkpoint_every=10", "model.layers=4", "model.tied_embeddings=false", "parallel.engine=fsdp"]
LAYOUTS = {"tp2": ["parallel.tp=2"], "pp2": ["parallel.pp=2", "parallel.grad_accum=2"]}


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):  # noqa: F811
    done: dict[tuple[str, str], dict] = {}

    def get(layout: str, policy: str) -> dict:
        if (layout, policy) not in done:
            tmp = tmp_path_factory.mktemp(f"{layout}-{policy}")
            r = run_train(tmp, [f"data.train={shards / 'train'}", f"out_dir={tmp / 'run'}", *COMMON, *LAYOUTS[layout],
                                f"train.activation_checkpointing={policy}"], nproc=2)
            assert r.returncode == 0, r.stderr[-3000:]
            done[layout, policy] = summary(tmp / "run")
        return done[layout, policy]

    return get


def per_rank(s: dict) -> list[dict]:
    """The activation figures of each pipeline rank (one entry without a pipeline)."""
    return s.get("stages") or [s]


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_op_policy_keeps_the_planners_bytes_under_tp_and_pp(layout, runs):
    op, none = per_rank(runs(layout, "op")), per_rank(runs(layout, "none"))
    assert len(op) == (2 if layout == "pp2" else 1)
    for checkpointed, whole in zip(op, none, strict=True):
        measured, predicted = checkpointed["activation_bytes_measured"], checkpointed["activation_bytes_predicted"]
        # to the byte but the scalar loss and its weight (fp32 each), which only the last stage computes
        assert 0 <= measured - predicted <= (8 if checkpointed is op[-1] else 0), (measured, predicted)
        assert measured < whole["activation_bytes_measured"]  # keeps less than without checkpointing


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_op_policy_trains_the_losses_of_no_checkpointing_under_tp_and_pp(layout, runs):
    assert runs(layout, "op")["losses"] == runs(layout, "none")["losses"]  # the recompute is exact


def test_emit_writes_the_op_policy_under_tp_and_pp_and_the_run_config_loads(tmp_path):
    from planner.core.schema import load_config
    from tests.test_emit_launch import emit

    assert emit(tmp_path, "--layers", "4", "--hidden", "64", "--heads", "4", "--vocab", "256", "--seq-len", "64",
                "--gpus", "4", "--fsdp", "full", "--checkpointing", "op", "--pp", "2", "--tp", "2") == 0
    cfg = load_config(tmp_path / "run.yaml")  # validated as the trainer loads it: no longer refused
    assert (cfg.train.activation_checkpointing, cfg.parallel.tp, cfg.parallel.pp) == ("op", 2, 2)


def test_op_terms_under_tp_split_all_but_downs_partial_output_and_add_the_reduce_scatters():
    from planner.core.schema import ModelConfig
    from planner.memory import activations
    from planner.model.shapes import shape_of

    shape = shape_of(ModelConfig(layers=2, hidden=512, heads=8, kv_heads=2, vocab=1000, seq_len=256))
    h, f, q, kv, heads = shape.hidden, shape.ffn, shape.q_dim, shape.n_kv_heads * shape.head_dim, shape.heads
    one = activations.layer_terms(shape, checkpointing="op")
    two = activations.layer_terms(shape, checkpointing="op", tp=2, sequence_parallel=True)
    assert sum(t.bytes for t in one) == 2 * h + 2 * (q + kv) + 2 * q + 4 * heads + 2 * f + 2 * h
    assert sum(t.bytes for t in two) == (2 * h + 2 * (q + kv) + 2 * q + 4 * heads + 2 * f) / 2 + 2 * h + 2 * 2 * h / 2
    assert {t.name: t.bytes for t in two}["down_output"] == 2 * h  # the partial sum over every position, whole


def test_search_offers_the_op_policy_with_tensor_and_pipeline_parallelism():
    from planner.plan.request import EstimateRequest
    from planner.plan.search import search

    r = search(EstimateRequest.from_flags(model="llama2-7b", gpu="h100-sxm", gpus=16), top=200)
    assert any(row["checkpointing"] == "op" and (row["tp"] > 1 or row["pp"] > 1) for row in r["top"])


@pytest.mark.parametrize("pp, schedule, virtual, layers", [(2, "1f1b", 1, 7), (3, "1f1b", 1, 8),
                                                           (2, "interleaved-1f1b", 2, 9)])
def test_a_pipeline_ranks_checkpointed_layers_are_the_ones_the_trainer_checkpoints(pp, schedule, virtual, layers):
    # `every`-k picks blocks by their model-wide index, so a stage's count depends on where its layers start
    from planner.core.parallel import ParallelPlan
    from planner.memory import activations, pipeline
    from pretrain.activation_checkpointing import checkpointed
    from pretrain.engines.pipeline import stage_ranges

    plan = ParallelPlan.from_flags(pp * 2, fsdp="full", pp=pp, pp_schedule=schedule, pp_virtual=virtual)
    ranges = stage_ranges(layers, plan)
    for every in (1, 2, 3):
        for share in pipeline.shares(layers, plan):
            trained = sum(checkpointed("op", every, i) == "op" for s in share.stages for i in ranges[s])
            assert activations.checkpointed_layers(share.layers, "op", every, share.layer_indices) == trained
