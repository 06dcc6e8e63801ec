"""Every numeric input of `planner optimal`, `planner fit` and `planner ladder design` is held to what is
physically meaningful: beyond it, one line on stderr naming the flag and exit status 2, never a plan."""

import json
import re

import pytest

from planner.cli import main


def refused(capsys, args: list[str], flag: str) -> str:
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == "", (code, captured.out[-500:])
    assert len(lines) == 1 and lines[0].startswith("planner: error: ") and flag in lines[0], captured.err
    return lines[0]


@pytest.mark.parametrize("args, flag", [
    # the case: 1e300 FLOPs printed a 2.9e152-parameter model
    (["--flops", "1e300"], "--flops"),
    (["--flops", "1e31"], "--flops"),
    (["--flops", "1e11"], "--flops"),
    (["--pf-days", "1e20"], "--pf-days"),  # 8.64e39 FLOPs
    (["--gpu-hours", "1e30"], "--gpu-hours"),
    (["--days", "1e5", "--gpus", "1000000"], "--days"),
    (["--dollars", "1e30"], "--dollars"),
    (["--flops", "1e23", "--params", "1e15"], "--params"),
    (["--flops", "1e23", "--params", "1e4"], "--params"),
    (["--params", "1e300"], "--params"),
    (["--flops", "1e23", "--max-tokens", "1e20"], "--max-tokens"),
    (["--flops", "1e23", "--max-tokens", "1000"], "--max-tokens"),
    (["--flops", "1e23", "--max-tokens", "1e12", "--max-epochs", "nan"], "--max-epochs"),
    (["--flops", "1e23", "--max-tokens", "1e12", "--max-epochs", "1e6"], "--max-epochs"),
    (["--flops", "1e23", "--max-tokens", "1e12", "--max-epochs", "0.5"], "--max-epochs"),
    (["--flops", "1e23", "--law", "tokens-per-param", "--tokens-per-param", "1e-9"], "--tokens-per-param"),
    (["--flops", "1e23", "--law", "tokens-per-param", "--tokens-per-param", "inf"], "--tokens-per-param"),
    (["--flops", "1e23", "--law", "tokens-per-param", "--tokens-per-param", "-20"], "--tokens-per-param"),
    (["--flops", "1e23", "--seq-len", "0"], "--seq-len"),
    (["--flops", "1e23", "--seq-len", "100000000"], "--seq-len"),
    (["--flops", "1e23", "--gpus", "0"], "--gpus"),
    (["--flops", "1e23", "--gpus", "100000000"], "--gpus"),
    (["--flops", "1e23", "--mfu", "nan"], "--mfu"),
    (["--flops", "1e23", "--mfu", "1.5"], "--mfu"),
    (["--flops", "1e23", "--mfu", "0"], "--mfu"),
    (["--flops", "1e23", "--price", "nan"], "--price"),
    (["--flops", "1e23", "--price", "-1"], "--price"),
    (["--flops", "1e23", "--price", "1e6"], "--price"),
])
def test_optimal_refuses_inputs_beyond_their_physical_range(capsys, args, flag):
    refused(capsys, ["optimal", *args], flag)


def test_budgets_in_other_units_are_held_to_the_same_flops_range(capsys):
    # 1e12 PF/s-days is 8.64e31 FLOPs: the message gives the FLOPs the unit came to, and the range.
    line = refused(capsys, ["optimal", "--pf-days", "1e12"], "--pf-days")
    assert "8.64e+31 FLOPs" in line and "1e+12 and 1e+30 FLOPs" in line


@pytest.mark.parametrize("args, says", [
    (["--flops", "1e30"], "at most 1e+14"),  # the default law spends 1e30 on 1.1e14 parameters
    (["--flops", "1e28", "--law", "kaplan"], "at most 1e+14"),  # N ~ C^0.73: 1e15 parameters
    (["--flops", "1e30", "--params", "1e8"], "1.67e+21 tokens"),  # more tokens than any corpus holds
    (["--params", "1e14", "--law", "chinchilla"], "3.11e+31 FLOPs"),  # its optimal tokens cost more than 1e30
])
def test_a_budget_the_law_would_spend_beyond_the_planners_range_is_refused(capsys, args, says):
    line = refused(capsys, ["optimal", *args], "--params" if args[0] == "--params" else "budget")
    assert says in line, line


@pytest.mark.parametrize("args", [["--flops", "1e29"], ["--flops", "1e13"], ["--params", "1e14"], ["--params", "1e5"],
                                  ["--flops", "1e30", "--law", "chinchilla"], ["--days", "30", "--gpus", "100000"]])
def test_the_edges_of_the_ranges_still_plan(capsys, args):
    assert main(["optimal", *args, "--json"]) == 0, capsys.readouterr().err


@pytest.fixture
def curve_csv(tmp_path):
    path = tmp_path / "curve.csv"
    path.write_text("step,loss\n" + "\n".join(f"{x},{2 + 30 * x ** -0.5}" for x in (10, 30, 100, 300, 1000, 3000)))
    return str(path)


@pytest.fixture
def nd_csv(tmp_path):
    rows = [f"{n},{d},{1.9 + 300 / n ** 0.35 + 900 / d ** 0.33}" for n in (2e7, 5e7, 1e8, 3e8) for d in (1e9, 3e9, 1e10)]
    path = tmp_path / "nd.csv"
    path.write_text("N,D,loss\n" + "\n".join(rows))
    return str(path)


@pytest.mark.parametrize("args, flag", [
    (["--min-x", "nan"], "--min-x"),
    (["--min-x", "-inf"], "--min-x"),
    (["--min-x", "inf"], "--min-x"),
    (["--target", "1e300"], "--target"),
    (["--seed", "-1", "--bootstrap", "3"], "--seed"),
    (["--seed", "99999999999"], "--seed"),
    (["--bootstrap", "-1"], "--bootstrap"),
])
def test_fit_curve_refuses_nonsense_numbers(capsys, curve_csv, args, flag):
    refused(capsys, ["fit", "curve", curve_csv, "--x-col", "step", *args], flag)


@pytest.mark.parametrize("args, flag", [
    (["--seed", "-5", "--bootstrap", "2"], "--seed"),
    (["--drop-worst", "-1"], "--drop-worst"),
    (["--drop-worst", "12"], "--drop-worst"),
    (["--max-iter", "0"], "--max-iter"),
])
def test_fit_nd_refuses_nonsense_numbers(capsys, nd_csv, args, flag):
    refused(capsys, ["fit", "nd", nd_csv, "--n-col", "N", "--d-col", "D", *args], flag)


LADDER = ["ladder", "design", "--data", "train", "--eval-data", "eval", "--vocab", "64", "--seq-len", "64",
          "--batch-tokens", "1024", "--ladder-flops", "3e11", "--target-flops", "2e11", "--widths", "16,24,32",
          "--holdout-width", "48"]


@pytest.mark.parametrize("args, flag", [
    (["--widths", "-16,24,32"], "--widths"),
    (["--widths", "nan,24,32"], "--widths"),  # was a traceback (int(nan))
    (["--widths", "inf,24,32"], "--widths"),
    (["--widths", "16.5,24,32"], "--widths"),  # was silently 16
    (["--holdout-width", "0"], "--holdout-width"),
    (["--batch-tokens", "0"], "--batch-tokens"),
    (["--batch-tokens", "1000"], "--batch-tokens"),  # not a multiple of the sequence
    (["--batch-tokens", str(1 << 30)], "--batch-tokens"),
    (["--multiples", "-1,2,4"], "--multiples"),  # was blamed on --ladder-flops
    (["--multiples", "0,1,2"], "--multiples"),
    (["--multiples", "nan,2,4"], "--multiples"),  # was a traceback
    (["--multiples", "1,2,1e300"], "--multiples"),
    (["--layers", "0"], "--layers"),
    (["--vocab", "1"], "--vocab"),
    (["--lr-ref", "nan"], "--lr-ref"),
    (["--lr-ref", "-0.01"], "--lr-ref"),
    (["--ladder-flops", "1e300"], "--ladder-flops"),
    (["--ladder-flops", "1e8"], "--ladder-flops"),  # runs of under 20 steps
    (["--target-flops", "1e300"], "--target-flops"),
    (["--target-flops", "1e6"], "--target-flops"),  # the held-out run under 20 steps: was blamed on --ladder-flops
    (["--micro-batch", "0"], "--micro-batch"),
    (["--micro-batch", "-3"], "--micro-batch"),
])
def test_ladder_design_refuses_nonsense_numbers(capsys, tmp_path, args, flag):
    refused(capsys, [*LADDER, "--out", str(tmp_path / "lad"), *args], flag)
    assert not (tmp_path / "lad" / "ladder.json").exists()


def shard_folders(root, seq_len: int = 64, vocab: int = 64) -> list[str]:
    """--data and --eval-data: folders with the manifest a packed split has (what design reads of it)."""
    for split in ("train", "eval"):
        (root / split).mkdir()
        (root / split / "manifest.json").write_text(json.dumps({"seq_len": seq_len, "vocab_size": vocab}))
    return ["--data", str(root / "train"), "--eval-data", str(root / "eval")]


def test_a_sensible_ladder_design_still_writes(capsys, tmp_path):
    assert main([*LADDER, *shard_folders(tmp_path), "--out", str(tmp_path / "lad"), "--widths", "16.0,24,32"]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "lad" / "ladder.json").is_file()


@pytest.mark.parametrize("shards, message", [
    ({}, "--data: .* is not a shard folder"),
    ({"seq_len": 32}, "--data: .* holds rows of 32 tokens, the ladder trains on --seq-len 64"),
    ({"vocab": 256}, "--data: .* vocabulary of 256, more than the ladder's --vocab 64"),
])
def test_ladder_design_reads_the_shards_its_runs_will_train_on(capsys, tmp_path, shards, message):
    data = shard_folders(tmp_path, **shards) if shards else ["--data", str(tmp_path / "none"), "--eval-data", "x"]
    assert main([*LADDER, *data, "--out", str(tmp_path / "lad")]) == 2
    assert re.search(message, capsys.readouterr().err) and not (tmp_path / "lad").exists()
