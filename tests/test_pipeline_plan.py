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


class _StandInStage:
    """What torch's schedule constructors read of a PipelineStage to build their action lists."""

    def __init__(self, index: int, stages: int, ranks: int):
        self.stage_index, self.num_stages, self.group_size, self.group_rank = index, stages, ranks, 0
        self.submod, self.is_first, self.is_last = None, index == 0, index == stages - 1


def torch_action_lists(schedule: str, p: int, v: int, m: int, monkeypatch) -> dict:
    """Every rank's compute actions in torch's order for `schedule` (no process group needed)."""
    import torch.distributed.pipelining.schedules as S

    if schedule in ("gpipe", "1f1b"):  # their lists pass through _add_reduce_grad, which drops the padding
        monkeypatch.setattr(S, "_add_reduce_grad", lambda actions, n: actions)
        cls = S.ScheduleGPipe if schedule == "gpipe" else S.Schedule1F1B
        order = cls(_StandInStage(0, p, p), m).pipeline_order
    else:
        cls = S.ScheduleInterleaved1F1B if schedule == "interleaved-1f1b" else S.ScheduleInterleavedZeroBubble
        order = cls([_StandInStage(k * p, v * p, p) for k in range(v)], m).pipeline_order
    lists = {r: [a for a in order[r] if a is not None and a.is_compute_op] for r in range(p)}
    if schedule == "1f1b":  # torch 2.13 labels the last rank's forwards 1..m (its backwards 0..m-1): relabel
        lists[p - 1] = [a._replace(microbatch_index=a.microbatch_index - 1) if a.computation_type == S.F else a
                        for a in lists[p - 1]]
    return lists


def replayed_clocks(lists: dict, stages: int, weight: list[float] | None = None) -> tuple[dict, dict]:
    """Each rank runs its actions in torch's order as soon as their inputs exist (forward 1, full backward 2,
    input-gradient 1, weight-gradient 1, each times its stage's `weight`); (each rank's end, each rank's busy time)."""
    import torch.distributed.pipelining.schedules as S

    weight = weight or [1.0] * stages
    cost = {S.F: 1, S.B: 2, S.I: 1, S.W: 1}
    done, clock, busy, queues = {}, dict.fromkeys(lists, 0.0), dict.fromkeys(lists, 0.0), {r: list(a) for r, a in lists.items()}

    def needs(a):
        s, kind, mb = a.stage_index, a.computation_type, a.microbatch_index
        if kind == S.F:
            return None if s == 0 else (s - 1, "F", mb)
        if kind == S.W:
            return (s, "dx", mb)
        return (s, "F", mb) if s == stages - 1 else (s + 1, "dx", mb)

    while any(queues.values()):
        moved = False
        for r, queue in queues.items():
            while queue and (needs(queue[0]) is None or needs(queue[0]) in done):
                a = queue.pop(0)
                dep = needs(a)
                seconds = cost[a.computation_type] * weight[a.stage_index]
                clock[r] = max(clock[r], done[dep] if dep else 0.0) + seconds
                busy[r] += seconds
                done[(a.stage_index, "F" if a.computation_type == S.F else "dx" if a.computation_type != S.W else "W",
                      a.microbatch_index)] = clock[r]
                moved = True
        assert moved, "torch's action list deadlocks"
    return clock, busy


def replayed_idle_share(lists: dict, stages: int) -> float:
    """The mean idle share of the step, every stage at the same cost."""
    clock, busy = replayed_clocks(lists, stages)
    step = max(clock.values())
    return sum(1 - b / step for b in busy.values()) / len(busy)


@pytest.mark.parametrize("schedule, p, v, m", [
    ("gpipe", 4, 1, 8), ("1f1b", 4, 1, 8), ("1f1b", 8, 1, 32), ("interleaved-1f1b", 4, 2, 8),
    ("interleaved-1f1b", 8, 4, 16), ("zero-bubble", 4, 2, 8), ("zero-bubble", 8, 4, 16), ("zero-bubble", 8, 1, 8),
])
def test_the_bubble_is_the_idle_share_of_torchs_own_action_list(schedule, p, v, m, monkeypatch):
    bubble = pipeline.bubble_fraction(plan(pp=p, pp_schedule=schedule, pp_virtual=v, microbatches=m))
    share = replayed_idle_share(torch_action_lists(schedule, p, v, m, monkeypatch), p * v)
    assert share == pytest.approx(bubble / (1 + bubble), abs=1e-9)


#: a stage's cost in units of a forward: equal; the last heavier (a decoder's head and loss); the first heavier (an
#: encoder-decoder's encoder, at T5's lengths)
LAST_HEAVY, FIRST_HEAVY = "last", "first"


def _weights(kind: str, stages: int) -> list[float]:
    return [1.0] * (stages - 1) + [1.5] if kind == LAST_HEAVY else [2.0] + [1.0] * (stages - 1)


@pytest.mark.parametrize("schedule, p, v, m", [
    ("gpipe", 4, 1, 8), ("1f1b", 4, 1, 8), ("1f1b", 2, 1, 4), ("interleaved-1f1b", 4, 2, 8), ("zero-bubble", 4, 2, 8),
])
@pytest.mark.parametrize("heavy", [LAST_HEAVY, FIRST_HEAVY])
def test_the_step_is_the_slowest_ranks_work_and_the_fill_and_drain_through_the_others(schedule, p, v, m, heavy,
                                                                                      monkeypatch):
    lists = torch_action_lists(schedule, p, v, m, monkeypatch)
    clock, busy = replayed_clocks(lists, p * v, _weights(heavy, p * v))
    slowest = max(busy, key=busy.get)
    others = [b for r, b in busy.items() if r != slowest]
    planned = busy[slowest] + pipeline.bubble_seconds(others, plan(pp=p, pp_schedule=schedule, pp_virtual=v,
                                                                   microbatches=m))
    replayed = max(clock.values())
    stretched = busy[slowest] * (1 + pipeline.bubble_fraction(plan(pp=p, pp_schedule=schedule, pp_virtual=v,
                                                                   microbatches=m)))
    assert replayed - 1e-9 <= planned < stretched  # never below the schedule, closer than stretching the slowest
    if heavy == LAST_HEAVY or schedule == "gpipe":
        assert planned == pytest.approx(replayed, abs=1e-9)


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


def test_compare_prices_every_strategy_with_the_pipeline_it_was_given():
    from planner.plan.compare import compare
    from planner.plan.request import EstimateRequest

    req = EstimateRequest.from_flags(model="llama2-70b", gpu="h100-sxm", gpus=64, tp=8, pp=4)
    flat = EstimateRequest.from_flags(model="llama2-70b", gpu="h100-sxm", gpus=64, tp=8)
    piped, alone = compare(req), compare(flat)
    assert piped["pipeline"] == {"pp": 4, "schedule": "1f1b", "virtual_stages_per_rank": 1, "microbatches": 8}
    by_name = {(r["strategy"], r["checkpointing"]): r for r in alone["rows"]}
    for row in piped["rows"]:
        other = by_name[row["strategy"], row["checkpointing"]]
        assert row["request"]["layout"]["pp"] == 4 and other["request"]["layout"]["pp"] == 1
        if row["strategy"] == "ddp":  # replicas of a quarter of the layers: a quarter of the model states
            assert row["memory_per_gpu_bytes"]["optimizer"] == pytest.approx(
                other["memory_per_gpu_bytes"]["optimizer"] / 4, rel=0.03)
