"""Tensor parallelism in the trainer: TP 2 x FSDP 2 on 4 gloo processes (a 2-D device mesh).

The same model and the same 8 sequences per step as one plain process (exact resume after a crash
is `tests/test_pretrain_runs.py`'s resume test, tp2-fsdp2); and the planner's per-rank memory for TP (weights split by TP then sharded by FSDP,
activations with sequence parallelism) against what each rank really holds.
"""

import pytest

from tests.conftest import run_cli
from tests.test_pretrain_runs import TP2_FSDP2 as TP_FSDP
from tests.test_pretrain_runs import run_train, shards, summary  # noqa: F401 (fixture)

COMMON = ["tracking.enabled=false", "optim.lr=0.01", "optim.warmup_steps=2", "train.checkpoint_every=5"]


@pytest.fixture(scope="module")
def tp_run(shards, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("tp")
    r = run_train(tmp, [f"data.train={shards / 'train'}", f"out_dir={tmp / 'tp'}", "train.steps=10", *COMMON, *TP_FSDP],
                  nproc=4)
    assert r.returncode == 0, r.stderr[-3000:]
    return summary(tmp / "tp")


@pytest.mark.slow
def test_tp2_fsdp2_losses_match_one_process_on_the_same_batches(tp_run, shards, tmp_path):  # noqa: F811
    # one process with micro-batch 8 sees the 8 sequences the two data-parallel ranks see together
    r = run_train(tmp_path, [f"data.train={shards / 'train'}", f"out_dir={tmp_path / 'one'}", "train.steps=10",
                             *COMMON, "parallel.micro_batch=8"])
    assert r.returncode == 0, r.stderr[-3000:]
    single = summary(tmp_path / "one")["losses"]
    assert [step for step, _ in tp_run["losses"]] == list(range(1, 11))
    for (_, tp_loss), (_, one_loss) in zip(tp_run["losses"], single, strict=True):
        assert tp_loss == pytest.approx(one_loss, rel=2e-3)  # bf16 tolerance; measured within 3e-4
    assert tp_run["tokens_seen"] == 10 * 8 * 64  # the plan's batch: TP ranks share their data-parallel slice


@pytest.mark.slow
def test_tp_model_states_per_rank_are_the_planners(tp_run):
    measured, predicted = tp_run["model_state_bytes_measured"], tp_run["model_state_bytes_predicted"]
    for key in ("master_weights", "gradients", "optimizer"):  # matrices split by TP, then by FSDP; norms by FSDP only
        assert measured[key] == pytest.approx(predicted[key], rel=0.01), key


@pytest.mark.slow
def test_tp_activations_with_sequence_parallel_are_the_planners(tp_run):
    # per layer and head term by term; the gap is FSDP's bf16 cast of the rotary tables (not modelled)
    assert tp_run["activation_bytes_predicted"] == pytest.approx(tp_run["activation_bytes_measured"], rel=0.01)


@pytest.mark.parametrize("overrides, message", [
    (["parallel.engine=deepspeed", "parallel.zero_stage=2", "parallel.tp=2"], "parallel.tp: DeepSpeed here runs without"),
    (["parallel.engine=ddp", "parallel.tp=2"], "parallel.tp: tensor parallelism runs composed with FSDP2"),
    (["parallel.engine=fsdp", "parallel.tp=3"], "parallel.tp: 3 must divide the 4 attention heads"),
])
def test_a_tp_layout_the_trainer_cannot_run_is_refused_at_load(overrides, message, tmp_path):
    r = run_cli("data.train=x", *overrides, module="pretrain.train")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_emit_with_tp_writes_the_whole_layout_and_the_batch_rule_holds(tmp_path):
    from planner.core.schema import load_config

    r = run_cli("emit", "--params", "1.3e9", "--gpus", "16", "--tp", "2", "--fsdp", "full", "--micro-batch", "2",
                "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    p = load_config(tmp_path / "run.yaml").parallel
    assert (p.engine, p.tp, p.world, p.nodes, p.dp) == ("fsdp", 2, 16, 2, 8)
    assert p.global_batch == p.micro_batch * p.grad_accum * p.dp == 2**22 // 2048


def test_emit_refuses_tp_with_deepspeed_in_one_line(tmp_path):
    r = run_cli("emit", "--params", "1.3e9", "--gpus", "4", "--tp", "2", "--zero", "2", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--tp: DeepSpeed here runs without" in r.stderr
    assert not (tmp_path / "run.yaml").exists()
