"""`planner estimate` as a user runs it: flags, JSON contract, tables, and one-line errors."""

import json

import pytest

from planner.cli import main
from tests.conftest import run_cli

JSON_KEYS = {"params", "memory_per_gpu_bytes", "bytes_per_param", "fits", "max_micro_batch", "flops",
             "flops_6nd", "pf_days", "gpu_hours", "wall_days", "cost_usd"}
MEMORY_KEYS = {"weights", "gradients", "optimizer", "master_weights", "activations", "overhead", "total"}


def estimate_json(capsys, *args):
    assert main(["estimate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_documented_keys(capsys):
    result = estimate_json(capsys, "--params", "7e9")
    assert result.keys() >= JSON_KEYS
    assert result["memory_per_gpu_bytes"].keys() >= MEMORY_KEYS


@pytest.mark.parametrize("text, value", [("7e9", 7e9), ("7B", 7e9), ("70b", 70e9), ("1.3e9", 1.3e9)])
def test_params_accepts_scientific_and_suffixed_counts(capsys, text, value):
    assert estimate_json(capsys, "--params", text)["params"] == value


def test_params_alone_infers_a_shape_and_says_so(capsys):
    result = estimate_json(capsys, "--params", "7e9")
    assert result["model"]["shape_inferred"] is True
    assert result["memory_per_moment_bytes"]["backward-start"]["activations"] > 0


def test_preset_uses_its_exact_shape(capsys):
    result = estimate_json(capsys, "--model", "llama2-7b")
    assert result["params"] == 6_738_415_616
    assert result["model"]["shape_inferred"] is False and result["model"]["seq_len"] == 4096


def test_explicit_shape_gives_its_parameter_count(capsys):
    result = estimate_json(capsys, "--layers", "32", "--hidden", "4096", "--heads", "32", "--vocab", "32000",
                           "--seq-len", "2048")
    assert result["params"] == 6_738_415_616


def test_default_tokens_are_20_per_parameter(capsys):
    # Hoffmann et al. 2022's rule of thumb; 70B -> 1.4T tokens.
    result = estimate_json(capsys, "--params", "70e9")
    assert result["compute"]["tokens"] == pytest.approx(1.4e12)
    assert result["flops_6nd"] == pytest.approx(6 * 70e9 * 1.4e12)


def test_sharding_lowers_memory_per_gpu_stage_by_stage(capsys):
    totals = [estimate_json(capsys, "--params", "7e9", "--gpus", "64", *flag)["memory_per_gpu_bytes"]["total"]
              for flag in ([], ["--zero", "1"], ["--zero", "2"], ["--zero", "3"])]
    assert totals == sorted(totals, reverse=True)


def test_max_micro_batch_fits_and_one_more_does_not(capsys):
    base = ["--model", "llama2-7b", "--zero", "3", "--gpus", "16"]
    b = estimate_json(capsys, *base)["max_micro_batch"]
    assert b >= 1
    assert estimate_json(capsys, *base, "--micro-batch", str(b))["fits"] is True
    assert estimate_json(capsys, *base, "--micro-batch", str(b + 1))["fits"] is False


def test_min_gpus_per_strategy_is_the_smallest_count_that_fits(capsys):
    result = estimate_json(capsys, "--params", "13e9")
    n = result["min_gpus_to_fit"]["zero3"]
    assert estimate_json(capsys, "--params", "13e9", "--zero", "3", "--gpus", str(n))["fits"] is True
    assert estimate_json(capsys, "--params", "13e9", "--zero", "3", "--gpus", str(n - 1))["fits"] is False
    assert result["min_gpus_to_fit"]["ddp"] is None  # 13B replicated never fits in 80 GiB


def test_offload_reports_cpu_memory(capsys):
    result = estimate_json(capsys, "--params", "7e9", "--zero", "3", "--offload", "all")
    assert result["cpu_memory_per_gpu_bytes"]["total"] > 0
    assert result["memory_per_gpu_bytes"]["optimizer"] == 0


def test_checkpointing_reduces_activation_memory(capsys):
    acts = [estimate_json(capsys, "--model", "llama2-7b", "--checkpointing", c)["memory_per_gpu_bytes"]["activations"]
            for c in ("none", "full")]
    assert acts[1] < acts[0] / 5


def test_v100_refuses_bf16_and_accepts_fp16(capsys):
    assert main(["estimate", "--params", "1e9", "--gpu", "v100"]) == 2
    assert "no bf16" in capsys.readouterr().err
    assert estimate_json(capsys, "--params", "1e9", "--gpu", "v100", "--precision", "fp16-mixed")["fits"] in (True, False)


def test_rule_of_thumb_view_for_one_billion_parameters(capsys):
    # The seeds' teaching figures: 4 GB fp32 weights, ~24 GB (6x) to train with Adam, 2 GB 16-bit, 1 GB int8.
    t = estimate_json(capsys, "--params", "1e9")["rule_of_thumb"]
    assert (t["fp32_weights_gb"], t["fp32_adam_training_gb"], t["training_to_weights_ratio"]) == (4, 24, 6)
    assert (t["fp16_weights_gb"], t["int8_weights_gb"]) == (2, 1)


@pytest.mark.parametrize("zero, expected_gb", [("0", 120.0), ("1", 31.40625), ("2", 16.640625), ("3", 1.875)])
def test_zero_paper_figure1_through_the_cli(capsys, zero, expected_gb):
    # Rajbhandari et al. 2019, ZeRO Figure 1 (Psi 7.5B, Nd 64, K 12), decimal GB, from the command a user types.
    r = estimate_json(capsys, "--params", "7.5e9", "--gpus", "64", "--precision", "fp16-mixed", "--optimizer",
                      "adam", "--zero", zero, "--convention", "zero-paper")
    assert r["model_states_per_gpu_bytes"] / 1e9 == pytest.approx(expected_gb, rel=1e-12)


def test_zero_paper_model_states_are_printed_in_decimal_gb():
    out = run_cli("estimate", "--params", "7.5e9", "--gpus", "64", "--precision", "fp16-mixed", "--optimizer",
                  "adam", "--zero", "3", "--convention", "zero-paper")
    assert "Model states per GPU: 1.875 GB" in out.stdout


def test_table_output_shows_every_section():
    out = run_cli("estimate", "--params", "7e9")
    assert out.returncode == 0
    for text in ("Memory per GPU", "Fits on", "Fewest GPUs", "FLOPs, 6ND", "petaFLOP/s-days", "GPU-hours",
                 "wall-clock days", "cost at", "shape inferred", "Rule of thumb"):
        assert text in out.stdout


@pytest.mark.parametrize("args, names", [
    (["--params", "-5"], "--params"),
    (["--params", "abc"], "--params"),
    (["--params", "7e9", "--gpus", "0"], "--gpus"),
    (["--params", "7e9", "--gpu", "x100"], "--gpu"),
    (["--model", "gpt5"], "--model"),
    (["--layers", "32", "--hidden", "4000", "--heads", "48", "--vocab", "32000"], "--heads"),
    (["--params", "7e9", "--mfu", "-0.2"], "--mfu"),
    (["--params", "7e9", "--mfu", "1.5"], "--mfu"),
    (["--params", "7e9", "--zero", "2", "--offload", "params"], "--offload"),
])
def test_bad_input_is_one_line_naming_the_flag_with_exit_2(args, names):
    out = run_cli("estimate", *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0]


@pytest.mark.parametrize("flags, says", [
    (["--zero", "3", "--offload", "optimizer"], "equal"),
    (["--zero", "2"], "equal"),
    (["--zero", "3"], "leaves out the 16-bit parameter shard"),
])
def test_deepspeeds_estimator_is_shown_with_equal_or_the_one_reason_it_differs(flags, says):
    out = run_cli("estimate", "--params", "7e9", "--gpus", "8", *flags).stdout
    line = next(x for x in out.splitlines() if x.startswith("DeepSpeed's own estimator"))
    assert says in line and ("equal" not in line or "leaves out" not in line)


def test_fewest_gpus_are_also_given_in_whole_nodes(capsys):
    r = estimate_json(capsys, "--params", "7e9", "--gpus-per-node", "2")
    fewest = r["min_gpus_to_fit"]
    assert fewest["ddp"] is None and r["min_nodes_to_fit"]["ddp"] is None  # 16 B/param of 7B never fits 80 GB
    assert any(g is not None and g > 2 for g in fewest.values())  # some strategy needs more than one node of 2
    assert r["min_nodes_to_fit"] == {k: None if g is None else -(-g // 2) for k, g in fewest.items()}


@pytest.mark.parametrize("flags, fits", [
    (["--fsdp", "full", "--gpus", "64"], True),
    (["--zero", "2", "--gpus", "8"], True),
    (["--gpus", "8"], False),  # DDP keeps 16 B/param of 6.7B parameters, 108 GB, on each 80 GB GPU
    (["--fsdp", "full", "--gpus", "8", "--gpu", "a100-40gb"], True),
])
def test_the_largest_micro_batch_fits_and_one_more_does_not(capsys, flags, fits):
    r = estimate_json(capsys, "--model", "llama-7b", *flags)
    b, cap = r["max_micro_batch"], r["gpu_memory_bytes"]
    assert (b >= 1) is fits, b
    if fits:
        assert estimate_json(capsys, "--model", "llama-7b", *flags, "--micro-batch", str(b))["memory_per_gpu_bytes"][
            "total"] <= cap
    assert estimate_json(capsys, "--model", "llama-7b", *flags, "--micro-batch", str(b + 1))["memory_per_gpu_bytes"][
        "total"] > cap
