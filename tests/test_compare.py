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


def test_the_best_row_moves_no_more_data_than_any_other_row_that_fits(llama2_7b_on_8_a100s):
    rows = [r for r in llama2_7b_on_8_a100s["rows"] if r.get("fits")]
    best = next(r for r in rows if r["best"])
    assert best["comm_params_per_step"] == min(r["comm_params_per_step"] for r in rows)


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
