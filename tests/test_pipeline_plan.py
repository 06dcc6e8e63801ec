"""Pipeline parallelism in the planner: the layout's rules, the mesh, the layers and activations per stage, and
the bubble (Narayanan et al. 2021; Korthikanti et al. 2022), held against torch.distributed.pipelining's own
schedule arithmetic where torch exposes it."""

import json

import pytest

from planner.cli import main as planner_main
from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan
from planner.memory import pipeline
from planner.model.presets import get_preset
from planner.plan.estimate import estimate, stage_breakdowns
from planner.plan.request import EstimateRequest, resolve_model


def plan(**kw) -> ParallelPlan:
    base = {"gpus": 16, "fsdp": "full", "pp": 4, "microbatches": 8}
    return ParallelPlan.from_flags(**{**base, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"pp": 4, "microbatches": 3}, "cannot fill a 1f1b pipeline of 4 ranks"),
    ({"pp_virtual": 2}, "need an interleaved schedule"),
    ({"pp": 3}, "--pp: 3 x --tp 1 does not divide --gpus 16"),
    ({"pp_schedule": "interleaved-1f1b", "pp_virtual": 2, "microbatches": 9}, "not a multiple of the schedule's 2 rounds"),
    ({"pp_schedule": "bfs"}, "is not one of gpipe, 1f1b, interleaved-1f1b, zero-bubble"),
])
def test_the_pipeline_rules_are_refused_naming_the_flag(kw, message):
    with pytest.raises(PlannerError, match=message):
        plan(**kw)


def test_gpipe_runs_with_fewer_micro_batches_than_ranks():
    assert plan(pp_schedule="gpipe", microbatches=2).grad_accum == 2


def test_the_mesh_puts_the_pipeline_outermost_and_data_parallel_excludes_it():
    p = ParallelPlan.from_flags(32, fsdp="full", tp=2, pp=4, microbatches=8)
    assert p.mesh_dims() == (("pp", 4), ("replicate", 1), ("shard", 4), ("tp", 2))
    assert p.dp == 4 and p.batch == 1 * 8 * 4
    # rank = (pp index x dp + dp index) x tp + tp index
    assert [(p.pp_rank(r), p.dp_rank(r)) for r in (0, 1, 2, 7, 8, 31)] == [(0, 0), (0, 0), (0, 1), (0, 3), (1, 0), (3, 3)]


def test_an_even_split_gives_the_remainder_to_the_middle_stages():
    p = plan()
    assert pipeline.stage_layers(80, p) == [20, 20, 20, 20]
    assert pipeline.stage_layers(30, p) == [7, 8, 8, 7]  # the first and last also hold embedding and head
    with pytest.raises(PlannerError, match="holds 30 layers, the model has 32"):
        pipeline.stage_layers(32, ParallelPlan(**{**plan().to_dict(), "pp_layers": [6, 8, 8, 8]}))


def test_1f1b_keeps_pp_minus_rank_micro_batches_in_flight():
    # torch's Schedule1F1B: "the first stage num_stages warmups ... last stage 1" (min(m, p - r))
    assert [s.in_flight for s in pipeline.shares(80, plan())] == [4, 3, 2, 1]
    assert [s.in_flight for s in pipeline.shares(80, plan(pp_schedule="gpipe"))] == [8] * 4


@pytest.mark.parametrize("schedule, factor", [("interleaved-1f1b", 2), ("zero-bubble", 1)])
@pytest.mark.parametrize("p, v, m", [(4, 2, 8), (4, 2, 12), (8, 4, 16), (2, 3, 4), (4, 2, 3)])
def test_warm_up_equals_torch_s_own_for_the_interleaved_schedules(schedule, factor, p, v, m):
    from torch.distributed.pipelining.schedules import _get_warmup_ops

    layout = ParallelPlan(engine="fsdp", world=p, pp=p, pp_virtual=v, pp_schedule=schedule, grad_accum=m,
                          micro_batch=1)
    per_round = m // max(1, m // p)
    for rank in range(p):
        assert pipeline.warmup_chunks(layout, rank) == _get_warmup_ops(rank, v, per_round, p, m, factor)


def test_interleaving_holds_megatrons_first_stage_factor():
    # Korthikanti et al. 2022 §4.2.3: the first stage holds (1 + (p - 1)/(p v)) x the 1F1B first stage's activations
    p, v = 4, 2
    one = pipeline.shares(64, plan())[0]
    inter = pipeline.shares(64, plan(pp_schedule="interleaved-1f1b", pp_virtual=v))[0]
    assert inter.in_flight * inter.layers / (one.in_flight * one.layers) == pytest.approx(1 + (p - 1) / (p * v))


def test_the_bubble_is_p_minus_one_over_m_and_interleaving_divides_it_by_v():
    assert pipeline.bubble_fraction(plan()) == 3 / 8
    assert pipeline.bubble_fraction(plan(pp_schedule="interleaved-1f1b", pp_virtual=2)) == 3 / 16
    assert pipeline.bubble_fraction(ParallelPlan.from_flags(8, fsdp="full")) == 0


def test_the_stages_hold_every_parameter_once_and_the_head_and_embedding_where_they_belong():
    shape = get_preset("llama2-7b").shape
    shares = pipeline.shares(shape.layers, plan())
    assert sum(pipeline.stage_params(shape, s) for s in shares) == shape.param_count()
    assert [(s.embedding, s.head) for s in shares] == [(True, False), (False, False), (False, False), (False, True)]


def test_per_stage_model_states_add_up_to_the_whole_models_on_the_same_shards():
    req = EstimateRequest(model="llama2-7b", layout=plan(fsdp="shard-grad-op"))
    model = resolve_model(req)
    stages = stage_breakdowns(req, model, req.layout)
    whole = EstimateRequest(model="llama2-7b", layout=ParallelPlan.from_flags(4, fsdp="shard-grad-op"))
    states = sum(b.states.gpu["optimizer"] for b in stages.values())
    assert states == pytest.approx(estimate(whole).memory.lines["optimizer"], rel=1e-9)


def test_the_estimate_is_the_worst_stage_and_lists_every_stage(capsys):
    capsys.readouterr()
    assert planner_main(["estimate", "--model", "llama2-70b", "--gpus", "64", "--tp", "8", "--pp", "4", "--fsdp",
                         "full", "--microbatches", "8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    stages = r["pipeline"]["stages"]
    assert [s["layers"] for s in stages] == [20, 20, 20, 20] and r["pipeline"]["bubble_fraction"] == 3 / 8
    assert r["memory_per_gpu_bytes"]["total"] == max(s["memory_bytes"]["total"] for s in stages)
    assert [s["microbatches_in_flight"] for s in stages] == [4, 3, 2, 1]
    assert stages[0]["memory_bytes"]["logits"] == 0 and stages[-1]["head"] and not stages[0]["head"]


def test_emit_writes_the_whole_pipeline_layout_and_its_bubble(tmp_path, capsys):
    from planner.core.schema import load_config

    assert planner_main(["emit", "--out", str(tmp_path / "job"), "--layers", "4", "--hidden", "64", "--heads", "4",
                         "--vocab", "256", "--seq-len", "64", "--gpus", "4", "--fsdp", "full", "--pp", "2",
                         "--global-batch", "16"]) == 0
    p = load_config(tmp_path / "job/run.yaml").parallel
    assert (p.pp, p.pp_schedule, p.pp_virtual, p.dp, p.grad_accum) == (2, "1f1b", 1, 2, 8)
    assert "pipeline 2 (1f1b, 1 stage(s) per rank, 8 micro-batches, bubble 12.5%)" in (tmp_path / "job/PLAN.md").read_text()
