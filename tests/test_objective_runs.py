"""The trainer's three objectives for real: MLM (encoder) and span corruption (encoder-decoder) beside CLM, on 2
gloo processes under FSDP2 and DeepSpeed ZeRO-2, under DDP and on one process; exact resume after a crash (the
masks are drawn per step, micro-batch and rank); the model states and the first forward's activations against the
planner. Launched as tests/test_pretrain_runs.py launches its runs (torchrun --standalone, OMP_NUM_THREADS=1)."""

from functools import cache
from pathlib import Path

import pytest
import torch

from planner.core.schema import load_config
from planner.model.shapes import span_corruption_lengths, span_corruption_raw_length
from pretrain.data.shards import PackedBatches, TokenShards
from pretrain.data.synthetic import write_markov_shards
from pretrain.objective import Objective
from tests.conftest import pack_sample
from tests.test_pretrain_runs import run_train, summary, trained

SEQ_LEN, VOCAB = 64, 300  # the shards' 256 ids, then pad, mask and the sentinels (no tokenizer: reserved ids)
OBJECTIVES = {
    # 38 of 256 positions per micro-batch carry MLM's loss: a bigger micro-batch for a steadier signal
    "mlm": ["model.arch=encoder", "parallel.micro_batch=8"],
    "span-corruption": ["model.arch=encoder-decoder", "parallel.micro_batch=4"],
}
#: how far the mean of the last 5 of 20 losses falls below the first 5's at least. In 20 steps MLM learns the masked
#: tokens' marginal distribution (5.63 -> 5.49 measured: the chain's stationary distribution is near uniform over
#: 255 ids; reading the neighbours takes positions learned over hundreds of steps); span corruption also learns the
#: sentinels and EOS of its targets (5.60 -> 4.70)
FALL = {"mlm": 0.1, "span-corruption": 0.5}
ENGINES = {"fsdp": ["parallel.engine=fsdp", "parallel.fsdp_mode=full"],
           "zero2": ["parallel.engine=deepspeed", "parallel.zero_stage=2"]}
TINY = ["train.steps=20", "optim.lr=0.01", "optim.warmup_steps=2", "train.checkpoint_every=10",
        f"model.vocab={VOCAB}", "tracking.enabled=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Markov shards: rows of 65 tokens (MLM reads 64) and of span corruption's 70 raw tokens for 64 inputs."""
    root = tmp_path_factory.mktemp("data")
    for objective, seq_len in (("mlm", SEQ_LEN), ("span-corruption", span_corruption_raw_length(SEQ_LEN) - 1)):
        write_markov_shards(root / objective / "train", rows=512, seq_len=seq_len)
        write_markov_shards(root / objective / "eval", rows=64, seq_len=seq_len, seed=9)
    return root


def common(shards: Path, objective: str) -> list[str]:
    return [f"data.train={shards / objective / 'train'}", *TINY, *OBJECTIVES[objective]]


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    """`straight(objective, engine)`: an uninterrupted 20-step 2-process run, trained once per module."""
    @cache
    def run(objective: str, engine: str) -> Path:
        cwd = trained(tmp_path_factory, f"{objective}-{engine}",
                      [*common(shards, objective), *ENGINES[engine]], nproc=2)
        return cwd / "run"

    return run


def falls(losses: list[float], by: float) -> bool:
    return sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - by


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_trains_20_steps_on_two_processes_with_the_loss_falling(objective, engine, straight):
    s = summary(straight(objective, engine))
    losses = [loss for _, loss in s["losses"]]
    assert len(losses) == 20 and falls(losses, FALL[objective])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_model_states_and_activations_are_the_planners(objective, engine, straight):
    s = summary(straight(objective, engine))
    assert s["model_state_bytes_measured"] == s["model_state_bytes_predicted"]  # to the byte, line by line
    assert s["activation_bytes_measured"] == s["activation_bytes_predicted"] + 4  # but the scalar loss


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["span-corruption"])  # its masks and MLM's come from one seeded stream
def test_resume_after_a_crash_reproduces_the_uninterrupted_losses(objective, straight, shards, tmp_path):
    args = [*common(shards, objective), f"out_dir={tmp_path / 'b'}", *ENGINES["fsdp"]]
    crashed = run_train(tmp_path, args, nproc=2, env={"PRETRAIN_FAIL_AFTER_STEP": "15"})
    assert crashed.returncode != 0 and (tmp_path / "b/checkpoints/latest").read_text().strip() == "step_00000010"
    resumed = run_train(tmp_path, args, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert summary(tmp_path / "b")["losses"] == summary(straight(objective, "fsdp"))["losses"]


# ---- the objective applied to packed rows (no processes) ------------------------------------------------------
def objective_for(shards: Path, name: str, rank: int = 0) -> tuple[Objective, PackedBatches]:
    arch = "encoder" if name == "mlm" else "encoder-decoder"
    cfg = load_config(None, [f"data.train={shards / name / 'train'}", f"model.arch={arch}", f"model.vocab={VOCAB}"])
    data = TokenShards.open(cfg.data.train)
    return Objective.for_run(cfg, data, rank), PackedBatches(data, 4, rank, 2)


def test_mlm_labels_only_the_masked_positions(shards):
    objective, data = objective_for(shards, "mlm")
    rows, _ = batch = data.next()
    inputs, labels = objective.apply(batch, step=1, micro=0)
    scored = labels != -100
    assert torch.equal(labels[scored], rows[scored]) and 0.05 < scored.float().mean() < 0.3
    assert torch.equal(inputs[~scored], rows[~scored])  # unmasked positions are left as they were
    assert (inputs[scored] == objective.ids.mask).float().mean() > 0.5  # most masked ones read <mask>
    assert not scored[rows == objective.ids.eos].any()  # the data's EOS is special: never masked


def test_span_corruption_gives_the_planners_input_and_target_lengths(shards):
    objective, data = objective_for(shards, "span-corruption")
    inputs, targets = objective.apply(data.next(), step=1, micro=0)
    assert (inputs.shape[1], targets.shape[1]) == span_corruption_lengths(SEQ_LEN) == (64, 14)
    assert span_corruption_raw_length(512) == 568 and span_corruption_lengths(512) == (512, 114)  # T5's figures


def test_masks_are_drawn_per_step_micro_batch_and_rank_and_repeat_exactly(shards):
    objective, data = objective_for(shards, "mlm")
    other_rank, _ = objective_for(shards, "mlm", rank=1)
    batch = data.next()
    first = objective.apply(batch, step=3, micro=1)[1]
    assert torch.equal(first, objective.apply(batch, step=3, micro=1)[1])  # a resumed run draws the same
    for changed in (objective.apply(batch, step=4, micro=1)[1], objective.apply(batch, step=3, micro=0)[1],
                    other_rank.apply(batch, step=3, micro=1)[1], objective.apply(batch, 3, 1, kind="eval")[1]):
        assert not torch.equal(first, changed)


def test_span_corruption_refuses_shards_of_another_row_length(shards, tmp_path):
    r = run_train(tmp_path, [f"data.train={shards / 'mlm' / 'train'}", "out_dir=run", "tracking.enabled=false",
                             "model.arch=encoder-decoder", f"model.vocab={VOCAB}", "train.steps=1"])
    assert r.returncode != 0 and "pack them with seq_len 69" in r.stderr


# ---- the round trip: planner emit -> launch preflight -> 3 steps ------------------------------------------------
TINY_BERT = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": VOCAB, "max_position_embeddings": 64,
             "type_vocab_size": 2}
TINY_T5 = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": 64, "num_layers": 2,
           "num_decoder_layers": 2, "num_heads": 4, "d_kv": 16, "d_ff": 256, "vocab_size": VOCAB,
           "feed_forward_proj": "relu"}
ROUND_TRIP = {"mlm": (TINY_BERT, ["--fsdp", "full"]), "span-corruption": (TINY_T5, ["--zero", "2"])}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ROUND_TRIP)
def test_round_trip_emit_launch_trains_3_steps_with_the_planned_tokens(objective, shards, tmp_path):
    # Tokens, as the planner counts them for every objective: seq_len per sequence, the encoder's input positions
    # (T5's convention); span corruption's targets (14 per 64 inputs here) are not counted on top.
    import json

    from tests.test_emit_launch import emit, launch

    hf, engine = ROUND_TRIP[objective]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    out = tmp_path / "emit"
    assert emit(out, "--hf-config", str(tmp_path / "config.json"), "--seq-len", str(SEQ_LEN), "--gpus", "2",
                "--gpus-per-node", "2", "--micro-batch", "2", "--batch-tokens", "512", "--tokens", "1536",
                "--data", str(shards / objective / "train"), "--precision", "fp32", *engine) == 0
    cfg = load_config(out / "run.yaml")
    assert cfg.model.arch == ("encoder" if objective == "mlm" else "encoder-decoder") and cfg.train.objective == objective
    r = launch("local", str(out / "run.yaml"), "--nproc", "2", "tracking.enabled=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "preflight: plan at 2 GPU(s)" in r.stdout
    s = summary(tmp_path / "runs/run")
    per_step = cfg.parallel.micro_batch * cfg.parallel.grad_accum * cfg.parallel.dp * cfg.model.seq_len
    assert per_step == 512 and cfg.train.steps == 3
    assert s["steps"] == 3 and s["tokens_seen"] == 1536
    assert s["model_state_bytes_measured"] == s["model_state_bytes_predicted"]
    assert s["activation_bytes_measured"] == s["activation_bytes_predicted"] + 4


# ---- real text: the shipped sample, its tokenizer's <mask>, <pad> and <extra_id_i> -----------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The shipped sample packed in rows of span corruption's raw length for 64 inputs (70 tokens: the MLM reads 69)."""
    return pack_sample(tmp_path_factory.mktemp("sample"), span_corruption_raw_length(SEQ_LEN) - 1)


@pytest.mark.slow
@pytest.mark.parametrize("objective, arch, seq_len, nproc, engine", [
    ("mlm", "encoder", span_corruption_raw_length(SEQ_LEN) - 1, 1, "single"),
    ("span-corruption", "encoder-decoder", SEQ_LEN, 2, "ddp")])
def test_one_process_and_ddp_train_each_objective_on_real_shards_with_its_eval_loss(objective, arch, seq_len, nproc,
                                                                                  engine, sample, tmp_path):
    """The sample's real text with its tokenizer's <mask>, <pad> and <extra_id_i>; eval loss per objective."""
    vocab = TokenShards.open(sample / "shards/train").vocab_size
    r = run_train(tmp_path, [f"data.train={sample / 'shards/train'}", f"data.eval={sample / 'shards/eval'}",
                             f"data.tokenizer={sample / 'tokenizer.json'}", f"out_dir={tmp_path / 'run'}",
                             "tracking.enabled=false", f"model.arch={arch}", f"model.vocab={vocab}",
                             f"model.seq_len={seq_len}", "train.steps=10", "train.eval_every=10", "optim.lr=0.003",
                             "optim.warmup_steps=2", "parallel.micro_batch=8", f"parallel.engine={engine}"], nproc=nproc)
    assert r.returncode == 0, r.stderr[-2000:]
    s = summary(tmp_path / "run")
    losses = [loss for _, loss in s["losses"]]
    print(f"\n{objective} on the sample's shards, 10 steps ({engine}): loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
          f"eval {s['eval_loss']:.3f}")
    assert losses[-1] < losses[0] - 0.5 and s["eval_loss"] < losses[0]  # from ln 2,048 = 7.6: frequent tokens first
    assert s["activation_bytes_measured"] == s["activation_bytes_predicted"] + 4  # autocast's terms
