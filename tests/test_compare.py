"""`planner compare`: every strategy side by side, the best marked, whole nodes, rows equal to estimate."""

import json
import subprocess
import sys

import pytest

from planner.cli import main


@pytest.fixture(scope="module")
def llama2_7b_on_8_a100s():
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", "--model", "llama2-7b", "--gpus", "8", "--gpu", "a100-80gb", "--json"]) == 0
    return json.loads(out.getvalue())


def test_compare_marks_one_best_strategy_and_it_fits(llama2_7b_on_8_a100s):
    best = [r for r in llama2_7b_on_8_a100s["rows"] if r.get("best")]
    assert len(best) == 1 and best[0]["fits"] and best[0]["max_micro_batch"] >= 1


def test_rows_are_ordered_by_predicted_time_per_token_and_the_best_is_the_fastest_that_fits(llama2_7b_on_8_a100s):
    rows = llama2_7b_on_8_a100s["rows"]
    fitting = [r for r in rows if r.get("fits")]
    assert rows[:len(fitting)] == fitting and rows[0]["best"]
    per_token = [r["seconds_per_token"] for r in fitting]
    assert per_token == sorted(per_token)
    for r in fitting:  # each row: its step, tokens/s per GPU and MFU, from the step-time model
        assert r["tokens_per_s_per_gpu"] == pytest.approx(1 / r["seconds_per_token"] / 8)
        assert 0 < r["mfu_predicted"] < 1


def test_offload_pays_for_its_pcie_traffic_in_step_time(llama2_7b_on_8_a100s):
    from planner.plan.compare import PCIE_BYTES_PER_S

    row = {(r["strategy"], r["checkpointing"]): r for r in llama2_7b_on_8_a100s["rows"]}
    plain, offload = row["zero2", "none"], row["zero2+offload-opt", "none"]
    extra = offload["step_time_s"] - plain["step_time_s"]
    assert extra == pytest.approx(offload["pcie_bytes_per_step"] / PCIE_BYTES_PER_S, rel=1e-6) and extra > 0


def test_search_ranks_over_ten_thousand_runnable_layouts_for_1024_gpus():
    from planner.core.parallel import ParallelPlan
    from planner.plan.request import EstimateRequest
    from planner.plan.search import search

    r = search(EstimateRequest.from_flags(model="llama3-8b", gpu="h100-sxm", gpus=1024), top=5)
    assert r["explored"] >= 10_000 and len(r["top"]) == 5
    rates = [row["tokens_per_s_per_gpu"] for row in r["top"]]
    assert rates == sorted(rates, reverse=True)  # fastest per token first
    for row in r["top"]:
        assert row["headroom_bytes"] >= 0 and row["why"]
        ParallelPlan(**row["layout"]).validate().check_runnable()  # a layout emit would write and the trainer runs


def test_gpu_counts_are_whole_nodes(llama2_7b_on_8_a100s):
    for row in llama2_7b_on_8_a100s["rows"]:
        if row.get("fewest_gpus") is not None:
            assert row["fewest_gpus"] % 8 == 0 and row["fewest_nodes"] * 8 == row["fewest_gpus"]
    ddp = next(r for r in llama2_7b_on_8_a100s["rows"] if r["strategy"] == "ddp" and r["checkpointing"] == "none")
    assert ddp["fewest_nodes"] is None  # 16 B/param of a 7B model never fits one 80 GB GPU unsharded


@pytest.mark.parametrize("strategy, flags", [("zero3", ["--zero", "3"]), ("fsdp-full", ["--fsdp", "full"]),
                                             ("zero2+offload-opt", ["--zero", "2", "--offload", "optimizer"]),
                                             ("ddp", [])])
def test_each_row_equals_estimate_for_that_strategy_alone(llama2_7b_on_8_a100s, capsys, strategy, flags):
    row = next(r for r in llama2_7b_on_8_a100s["rows"] if r["strategy"] == strategy and r["checkpointing"] == "none")
    assert main(["estimate", "--model", "llama2-7b", "--gpus", "8", *flags, "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert row["memory_per_gpu_bytes"] == alone["memory_per_gpu_bytes"]
    assert row["max_micro_batch"] == alone["max_micro_batch"] and row["fits"] == alone["fits"]


def test_zero3_moves_one_and_a_half_times_what_ddp_moves():
    # Rajbhandari et al. 2019, §7.2.1: DDP 2 Psi per step, ZeRO-3 3 Psi.
    from planner.core.parallel import ParallelPlan
    from planner.plan.compare import comm_params_per_step

    zero3, ddp = ParallelPlan.from_flags(8, zero=3), ParallelPlan.from_flags(8)
    assert comm_params_per_step(zero3) / comm_params_per_step(ddp) == 1.5


def test_compare_shows_what_each_engine_sends_over_its_steps_micro_batches(capsys):
    # the bytes the step time prices, per GPU and step, 4 micro-batches on 8 GPUs: DeepSpeed ZeRO-1 all-reduces its
    # 16-bit gradients and gathers the parameters once a step; ZeRO-2 does so on every micro-batch; FSDP full
    # reduce-scatters fp32 gradients and gathers 16-bit parameters twice, on every micro-batch
    assert main(["compare", "--model", "llama2-7b", "--gpus", "8", "--microbatches", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    sent = {row["strategy"]: row["comm_bytes_per_step"] for row in r["rows"] if row["checkpointing"] == "none"}
    half = 7 / 8 * r["params"]  # one reduce-scatter's or all-gather's elements
    assert sent["zero1"] == pytest.approx(2 * half * 2 + half * 2)
    assert sent["zero2"] == pytest.approx(4 * sent["zero1"])
    assert sent["fsdp-full"] == pytest.approx(4 * (half * 4 + 2 * half * 2))


def test_compare_plot_is_a_png_with_the_capacity_line(tmp_path, capsys):
    png = tmp_path / "strategies.png"
    assert main(["compare", "--model", "llama2-7b", "--gpus", "8", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "Best:" in capsys.readouterr().out


def test_compare_without_plot_imports_neither_numpy_nor_matplotlib():
    code = ("import sys\nfrom planner.cli import main\nmain(['compare', '--params', '7e9', '--json'])\n"
            "print([m for m in ('numpy', 'matplotlib', 'torch') if m in sys.modules], file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_search_ranks_a_gpt_style_model_without_the_op_policy_planned_for_our_llama_block():
    from planner.plan.request import EstimateRequest
    from planner.plan.search import search

    r = search(EstimateRequest.from_flags(model="bloomberggpt-50b", gpus=64), top=10)
    assert len(r["top"]) == 10 and {row["checkpointing"] for row in r["top"]} <= {"full", "none"}


def test_without_a_step_time_the_best_row_is_the_one_with_most_headroom_and_says_so(tmp_path, capsys):
    catalog = tmp_path / "cat.yaml"  # no interconnect_gbps: the step-time model cannot price a node's collectives
    catalog.write_text("g: {memory_gib: 80, peak_tflops: {bf16: 989}, price_per_hour: 2, hbm_gbps: 3350, "
                       "network_gbps: 50}\n")
    assert main(["compare", "--model", "llama2-7b", "--gpus", "16", "--gpu-catalog", str(catalog), "--gpu", "g",
                 "--json"]) == 0
    rows = [row for row in json.loads(capsys.readouterr().out)["rows"] if row.get("fits")]
    assert all(row["step_time_s"] is None for row in rows)
    assert rows[0]["best"] and rows[0]["headroom_bytes"] == max(row["headroom_bytes"] for row in rows)
    assert main(["compare", "--model", "llama2-7b", "--gpus", "16", "--gpu-catalog", str(catalog), "--gpu", "g"]) == 0
    assert "the most headroom of those that fit (no step time" in capsys.readouterr().out
