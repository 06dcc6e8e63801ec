"""The run schema: one typed description of a job that survives YAML, emit, estimate and launch intact."""

import json
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from planner.cli import main as planner_main
from planner.core.parallel import ParallelPlan
from planner.core.schema import (
    ConfigError,
    DataConfig,
    EngineConfig,
    GPUSpec,
    ModelConfig,
    OptimConfig,
    PlanningConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
    dump_config,
    load_config,
)
from pretrain.data.synthetic import write_markov_shards

TINY = ["--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "256", "--seq-len", "64"]


def every_field_changed() -> RunConfig:
    """A config in which no field keeps its default (so a field lost on the way shows)."""
    return RunConfig(
        name="every-field", out_dir="runs/every",
        model=ModelConfig(layers=3, hidden=96, heads=6, kv_heads=2, ffn_hidden=256, vocab=300, seq_len=48,
                          tied_embeddings=True, norm_eps=1e-6, rope_theta=5e5, init_std=0.01),
        data=DataConfig(train="shards/t", eval="shards/e", tokenizer="tok.json", seed=7),
        optim=OptimConfig(lr=1e-3, min_lr_ratio=0.2, warmup_steps=3, weight_decay=0.05, beta1=0.8, beta2=0.9,
                          eps=1e-7, grad_clip=0.5),
        train=TrainConfig(steps=11, precision="fp32", seed=9, eval_every=5, eval_batches=2, checkpoint_every=4,
                          checkpoint_dir="ck", resume=False, log_every=2, max_skipped_steps=3, spike_factor=2.0,
                          spike_window=7, activation_checkpointing="op", activation_checkpointing_every=2,
                          keep_last_checkpoints=2),
        parallel=ParallelPlan(engine="fsdp", world=4, nodes=2, tp=1, dp_shard=2, fsdp_mode="hybrid", offload="all",
                              micro_batch=2, grad_accum=3, global_batch=24),
        engine=EngineConfig(ds_config=None, backend="gloo", timeout_s=30),
        tracking=TrackingConfig(enabled=False, tracking_uri="sqlite:///x.db", experiment="e", run_name="r",
                                fallback_dir="off", parent_run="ladder", system_metrics=False,
                                system_metrics_every_s=2.0),
        planning=PlanningConfig(params=2e9, gpu="my-gpu", gpus_per_node=4, tokens=1e9, convention="fsdp",
                                flash_attention=False, mfu=0.3, price=2.5, runtime_gib=1.0, fragmentation=0.05,
                                finetune="full",
                                gpu_spec=GPUSpec(memory_gib=48.0, peak_tflops={"bf16": 400.0, "fp32": 50.0},
                                                 price_per_hour=3.0, interconnect_gbps=100.0, description="mine",
                                                 hbm_gbps=900.0, network_gbps=12.5, device="cpu",
                                                 attention_tflops={"fp32": 0.02}, shard_collectives_gbps=0.2,
                                                 all_gather_gbps=0.25, matmul_tflops={"bf16": 350.0},
                                                 flash_attention_tflops={"bf16": 200.0})),
        plan={"gpu_hours": 12.5},
    )


def defaults_kept(value, default, path=""):
    """The dotted paths of fields equal to the schema's default (recursively)."""
    if is_dataclass(value) and is_dataclass(default):
        return [p for f in fields(value)
                for p in defaults_kept(getattr(value, f.name), getattr(default, f.name), f"{path}{f.name}.")]
    return [path.rstrip(".")] if value == default else []


def test_the_round_trip_config_leaves_no_field_at_its_default():
    cfg, default = every_field_changed(), RunConfig(planning=PlanningConfig(gpu_spec=GPUSpec()))
    # an FSDP hybrid plan with offload runs without TP or a pipeline (whose fields round-trip in the
    # next test) and has no ZeRO stage or DeepSpeed JSON; its model is dense (the op policy is refused for an MoE
    # layer), so the MoE fields and expert parallelism round-trip in the test after; it is a decoder, so the encoder's
    # and encoder-decoder's fields and objectives round-trip in the one after that
    assert defaults_kept(cfg, default) == ["model.experts", "model.top_k", "model.expert_ffn", "model.shared_experts",
                                           "model.shared_ffn", "model.dense_layers", "model.capacity_factor",
                                           "model.router_aux_loss_coef", "model.arch", "model.mlp",
                                           "model.max_positions", "model.token_types", "model.decoder_layers",
                                           "model.head_dim", "model.relative_buckets", "model.decoder_start_id",
                                           "train.objective", "parallel.tp", "parallel.pp",
                                           "parallel.pp_schedule", "parallel.pp_virtual", "parallel.pp_layers",
                                           "parallel.zero_stage", "parallel.ep", "engine.ds_config"]


def test_an_moe_model_with_expert_parallelism_survives_yaml_and_back(tmp_path):
    model = ModelConfig(layers=3, experts=8, top_k=1, expert_ffn=96, shared_experts=2, shared_ffn=64, dense_layers=1,
                        router_aux_loss_coef=0.02)
    plan = ParallelPlan(engine="fsdp", world=8, fsdp_mode="hybrid", dp_shard=4, ep=2)
    cfg = RunConfig(model=model, data=DataConfig(train="shards/t"), parallel=plan)
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    loaded = load_config(path)
    assert (loaded.model, loaded.parallel) == (model, plan)


@pytest.mark.parametrize("model, objective", [
    (ModelConfig(arch="encoder", mlp="gelu", max_positions=128, token_types=2, tied_embeddings=True), "mlm"),
    (ModelConfig(arch="encoder-decoder", mlp="geglu", decoder_layers=3, head_dim=8, relative_buckets=16,
                 decoder_start_id=1), "span-corruption"),
])
def test_an_encoder_and_an_encoder_decoder_survive_yaml_and_back(tmp_path, model, objective):
    cfg = RunConfig(model=model, data=DataConfig(train="shards/t"), train=TrainConfig(objective=objective))
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    loaded = load_config(path)
    assert (loaded.model, loaded.train.objective) == (model, objective)


def test_a_whole_pipeline_layout_survives_yaml_and_back(tmp_path):
    plan = ParallelPlan(engine="fsdp", world=8, pp=2, pp_schedule="interleaved-1f1b", pp_virtual=2,
                        pp_layers=[1, 2, 2, 1], micro_batch=1, grad_accum=4, global_batch=16)
    cfg = RunConfig(model=ModelConfig(layers=6), data=DataConfig(train="shards/t"), parallel=plan)
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path).parallel == plan


def test_a_pipeline_with_tied_embeddings_is_refused_naming_the_key(tmp_path):
    plan = ParallelPlan(engine="fsdp", world=4, pp=2, micro_batch=1, grad_accum=4)
    cfg = RunConfig(model=ModelConfig(layers=4, tied_embeddings=True), data=DataConfig(train="t"), parallel=plan)
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    with pytest.raises(ConfigError, match=r"^parallel\.pp: a pipeline holds the embedding and the head"):
        load_config(path)


def test_every_field_survives_yaml_and_back(tmp_path):
    cfg = every_field_changed()
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert dump_config(load_config(path)) == dump_config(cfg)


def test_a_wrong_planning_value_fails_at_load_naming_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(every_field_changed()).replace("fragmentation: 0.05", "fragmentation: 0.9"))
    with pytest.raises(Exception, match=r"planning\.fragmentation"):
        load_config(path)


CATALOG = "my-gpu:\n  memory_gib: 48\n  peak_tflops: {bf16: 400, fp32: 50}\n  price_per_hour: 3.0\n"
FLAGS = ["--gpu", "my-gpu", "--gpus", "2", "--gpus-per-node", "2", "--fsdp", "full", "--micro-batch", "2",
         "--fragmentation", "0.05", "--no-flash-attention", "--runtime-gib", "1.5", "--convention", "zero-paper",
         "--checkpointing", "full", "--mfu", "0.33", "--price", "2.0", "--tokens", "5e7", "--finetune", "full"]


def estimate_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert planner_main(["estimate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("model", [TINY, ["--params", "3e8", "--seq-len", "256"]], ids=["shape", "params"])
def test_estimate_from_the_emitted_config_equals_the_flags_for_a_custom_gpu(tmp_path, capsys, model):
    (tmp_path / "cat.yaml").write_text(CATALOG)
    flags = [*model, *FLAGS, "--gpu-catalog", str(tmp_path / "cat.yaml")]
    tokens = ["--batch-tokens", str(2 * 2 * (64 if model is TINY else 256))]
    assert planner_main(["emit", "--out", str(tmp_path / "job"), *flags, *tokens]) == 0
    by_flags = estimate_json(capsys, *flags)
    (tmp_path / "cat.yaml").unlink()  # run.yaml alone must carry the GPU
    by_config = estimate_json(capsys, "--config", str(tmp_path / "job" / "run.yaml"))
    assert by_config["memory_per_moment_bytes"] == by_flags["memory_per_moment_bytes"]
    assert by_config["memory_per_gpu_bytes"]["total"] == by_flags["memory_per_gpu_bytes"]["total"]
    assert by_config["compute"] == by_flags["compute"]
    assert by_config["hardware"]["gpu"] == "my-gpu" and by_config["gpu_memory_bytes"] == 48 * 2**30
    assert by_config["training"]["flash_attention"] is False and by_config["training"]["convention"] == "zero-paper"


def test_a_custom_gpu_plan_passes_the_launch_preflight(tmp_path):
    (tmp_path / "cat.yaml").write_text(CATALOG)
    write_markov_shards(tmp_path / "shards", rows=64)
    assert planner_main(["emit", "--out", str(tmp_path / "job"), *TINY, *FLAGS, "--gpu-catalog",
                         str(tmp_path / "cat.yaml"), "--batch-tokens", "256", "--data", str(tmp_path / "shards")]) == 0
    out = subprocess.run([sys.executable, "-m", "launch.cli", "local", str(tmp_path / "job" / "run.yaml"),
                          "--nproc", "2", "--dry-run"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "on my-gpu" in out.stdout and "torch.distributed.run" in out.stdout


def test_the_table_names_the_peak_moment_and_lists_the_others(capsys):
    capsys.readouterr()
    assert planner_main(["estimate", "--params", "7e9", "--fsdp", "full", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "peak" in out and "optimizer-step" in out and "backward-start" in out


@pytest.mark.parametrize("flag, value, message", [
    ("--precision", "fp16-mixed", "--precision: the trainer runs"),
    ("--checkpointing", "selective", "--checkpointing: the trainer recomputes whole blocks"),
    ("--finetune", "lora", "--finetune lora: the trainer does not train adapters"),
    ("--optimizer", "sgd", "--optimizer: the trainer steps with AdamW"),
])
def test_emit_refuses_a_plan_the_trainer_cannot_run_in_one_line(tmp_path, capsys, flag, value, message):
    capsys.readouterr()
    assert planner_main(["emit", "--out", str(tmp_path / "job"), *TINY, flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "job").exists()


def test_emit_refuses_a_folder_that_holds_another_job_and_keeps_its_files(tmp_path, capsys):
    assert planner_main(["emit", "--out", str(tmp_path), *TINY, "--name", "first"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert planner_main(["emit", "--out", str(tmp_path), *TINY, "--name", "second"]) == 2
    assert "another job's run.yaml" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert planner_main(["emit", "--out", str(tmp_path), *TINY, "--name", "second", "--force"]) == 0
    assert "name: second" in (tmp_path / "run.yaml").read_text()


def test_emit_that_fails_part_way_writes_nothing(tmp_path, capsys, monkeypatch):
    from planner.emit import run_files

    calls = []

    def fail_on_the_fifth(path, text):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(28, "No space left on device", str(path))
        return real(path, text)

    real = run_files.atomic_write_text
    monkeypatch.setattr(run_files, "atomic_write_text", fail_on_the_fifth)
    assert planner_main(["emit", "--out", str(tmp_path / "job"), *TINY]) == 2
    assert len(calls) == 5 and not (tmp_path / "job").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind


def test_writes_refuse_a_device_or_fifo_as_the_target(tmp_path, capsys):
    import os

    fifo = tmp_path / "law.json"
    os.mkfifo(fifo)
    data = tmp_path / "runs.csv"
    data.write_text("N,D,loss\n" + "".join(f"{n},{d},{2 + 400 / n**0.3 + 400 / d**0.3}\n"
                                           for n in (1e6, 3e6, 1e7, 3e7) for d in (1e8, 3e8, 1e9)))
    capsys.readouterr()
    assert planner_main(["fit", "nd", str(data), "--n-col", "N", "--d-col", "D", "--out", str(fifo)]) == 2
    assert "is a FIFO, not a regular file to write" in capsys.readouterr().err
    assert fifo.is_fifo()


def test_a_fifo_given_as_a_gpu_catalog_is_refused_not_read(tmp_path, capsys):
    import os

    fifo = tmp_path / "cat.yaml"
    os.mkfifo(fifo)
    capsys.readouterr()
    assert planner_main(["estimate", "--params", "7e9", "--gpu-catalog", str(fifo)]) == 2
    assert "is a FIFO" in capsys.readouterr().err


@pytest.mark.parametrize("entry, key", [
    ("{memory_gib: 80, peak_tflops: {bf16: 0}, price_per_hour: 1}", "peak_tflops.bf16"),
    ("{memory_gib: 80, peak_tflops: {bf16: .nan}, price_per_hour: 1}", "peak_tflops.bf16"),
    ("{memory_gib: 80, peak_tflops: [989], price_per_hour: 1}", "peak_tflops"),
    ("{memory_gib: 80, peak_tflops: {bf16: -989}, price_per_hour: 1}", "peak_tflops.bf16"),
    ("{memory_gib: .inf, peak_tflops: {bf16: 989}, price_per_hour: 1}", "memory_gib"),
])
def test_a_gpu_catalog_with_a_meaningless_value_names_the_key(tmp_path, capsys, entry, key):
    (tmp_path / "cat.yaml").write_text(f"mine: {entry}\n")
    capsys.readouterr()
    assert planner_main(["estimate", "--params", "7e9", "--gpu", "mine", "--gpu-catalog", str(tmp_path / "cat.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"mine.{key}" in err and len(err.splitlines()) == 1


def test_slurm_times_in_minutes_are_read_as_the_readme_documents():
    from planner.emit.slurm import parse_time_hours

    assert [parse_time_hours(t) for t in ("2880", "90:30", "48:00:00", "2-00", "1-02:30")] == [48.0, 1.5083333333333333, 48.0, 48.0, 26.5]


def test_shape_flags_are_held_to_the_parameter_range(capsys):
    capsys.readouterr()
    assert planner_main(["estimate", "--layers", "100000", "--hidden", "65536", "--heads", "64", "--vocab", "32000"]) == 2
    assert "above the plausible 1e+14" in capsys.readouterr().err


def test_an_hf_config_with_a_non_boolean_tie_flag_or_deep_nesting_is_refused(tmp_path, capsys):
    import json as _json

    from planner.model.hf_config import SHIPPED

    cfg = _json.loads((SHIPPED / "llama3-8b.json").read_text())
    (tmp_path / "tie.json").write_text(_json.dumps({**cfg, "tie_word_embeddings": "no"}))
    (tmp_path / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    for name, message in (("tie.json", "tie_word_embeddings must be true or false"), ("deep.json", "nested too deeply")):
        capsys.readouterr()
        assert planner_main(["estimate", "--hf-config", str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err


def _fit_data(tmp_path):
    data = tmp_path / "runs.csv"
    data.write_text("N,D,loss\n" + "".join(f"{n},{d},{2 + 400 / n**0.3 + 400 / d**0.3}\n"
                                           for n in (1e6, 3e6, 1e7, 3e7) for d in (1e8, 3e8, 1e9)))
    return data


def test_a_fit_never_turns_a_device_into_a_json_file(tmp_path, capsys):
    capsys.readouterr()
    assert planner_main(["fit", "nd", str(_fit_data(tmp_path)), "--n-col", "N", "--d-col", "D",
                         "--out", "/dev/full"]) == 2
    assert "/dev/full" in capsys.readouterr().err and Path("/dev/full").is_char_device()


def test_a_fit_that_did_not_converge_leaves_an_existing_law_file_alone(tmp_path, capsys):
    law = tmp_path / "law.json"
    law.write_text('{"kept": true}\n')
    code = planner_main(["fit", "nd", str(_fit_data(tmp_path)), "--n-col", "N", "--d-col", "D", "--max-iter", "1",
                         "--out", str(law)])
    assert code == 1 and "was not written" in capsys.readouterr().err
    assert law.read_text() == '{"kept": true}\n'
