"""`planner optimal` and `planner fit` as a user runs them, with CSV and real MLflow data."""

import json
import sys

import numpy as np
import pytest

from planner.cli import main
from planner.laws.fit import predict_nd
from tests.conftest import run_cli

CHINCHILLA_COLS = ["--n-col", "Model Size", "--flops-col", "Training FLOP", "--loss-col", "loss"]


def cli_json(capsys, *args):
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_optimal_json_has_the_documented_keys_and_restates_the_budget(capsys):
    r = cli_json(capsys, "optimal", "--flops", "5.76e23", "--law", "chinchilla")
    assert {"flops", "params", "tokens", "tokens_per_param", "loss"} <= r.keys()
    assert r["params"] == pytest.approx(3.219e10, rel=1e-3)  # Hoffmann et al. 2022 eq. 10's rounded constants, by name
    assert {"flops", "pf_days", "gpu_hours", "days", "dollars"} <= r["budget"].keys()
    assert r["numerical_check"]["rel_diff_params"] < 1e-5


def test_optimal_suggests_a_shape_with_its_exact_count(capsys):
    r = cli_json(capsys, "optimal", "--pf-days", "100", "--law", "tokens-per-param")
    s = r["suggested_shape"]
    # its count, term by term for a LLaMA block (Touvron et al. 2023: RMSNorm, SwiGLU, untied head):
    h, kv = s["hidden"], s["kv_heads"] * s["hidden"] // s["heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * s["ffn_hidden"] + 2 * h
    assert s["params"] == s["layers"] * per_layer + 2 * s["vocab"] * h + h
    assert s["params"] == pytest.approx(r["params"], rel=0.1)


def test_default_law_gives_the_twenty_tokens_per_parameter_regime(capsys):
    # Besiroglu et al. 2024 refit at Gopher's budget: ~72B on ~1.33T, ~18 tokens per parameter.
    r = cli_json(capsys, "optimal", "--flops", "5.76e23")
    assert r["law"] == "epoch" and 15 <= r["tokens_per_param"] <= 30
    assert r["params"] == pytest.approx(7.225e10, rel=1e-3)


def test_optimal_tokens_for_a_model_size_without_a_budget(capsys):
    # Hoffmann et al. 2022: Chinchilla, 70B on 1.4T tokens (20 per parameter).
    r = cli_json(capsys, "optimal", "--params", "70e9", "--law", "tokens-per-param")
    assert r["tokens"] == pytest.approx(1.4e12, rel=1e-9)
    assert r["budget"]["flops_6nd"] == pytest.approx(6 * 70e9 * 1.4e12, rel=1e-9)


def test_optimal_tokens_for_a_size_invert_the_laws_own_optimum(capsys):
    r = cli_json(capsys, "optimal", "--params", "70e9")
    again = cli_json(capsys, "optimal", "--flops", str(r["budget"]["flops_6nd"]))
    assert again["params"] == pytest.approx(70e9, rel=1e-6)


def test_optimal_budget_in_days_buys_model_flops_and_the_law_spends_6nd(capsys):
    r = cli_json(capsys, "optimal", "--days", "30", "--gpus", "64", "--gpu", "h100-sxm", "--mfu", "0.4")
    bought = 30 * 86400 * 64 * 989e12 * 0.4
    assert r["budget"]["flops"] == pytest.approx(bought, rel=1e-9)  # model FLOPs of the suggested shape
    assert r["flops"] == pytest.approx(6 * r["params"] * r["tokens"]) and r["flops"] < bought


def test_fitted_law_file_drives_optimal(capsys, tmp_path, published_data):
    law = tmp_path / "law.json"
    fitted = cli_json(capsys, "fit", "nd", str(published_data / "chinchilla_fig4_epoch.csv"), *CHINCHILLA_COLS,
                      "--drop-worst", "5", "--out", str(law), "--plot", str(tmp_path / "nd.png"))
    assert {"E", "A", "B", "alpha", "beta", "stderr"} <= fitted.keys()
    assert (tmp_path / "nd.png").stat().st_size > 10_000
    r = cli_json(capsys, "optimal", "--flops", "5.76e23", "--law", str(law))
    assert r["params"] == pytest.approx(7.2e10, rel=0.05)  # Epoch's ~72B, not Hoffmann's 32B


def test_fit_curve_from_csv_with_bootstrap_band_and_plot(capsys, tmp_path):
    x = np.geomspace(10, 5000, 40)
    (tmp_path / "curve.csv").write_text("step,loss\n" + "\n".join(f"{a},{2 + 30 * a ** -0.5}" for a in x))
    r = cli_json(capsys, "fit", "curve", str(tmp_path / "curve.csv"), "--x-col", "step", "--bootstrap", "20",
                 "--target", "1e5", "--plot", str(tmp_path / "c.png"))
    assert r["E"] == pytest.approx(2.0, rel=0.01) and "loss_lo95" in r["target"]
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_fit_reads_runs_and_metric_histories_from_mlflow(capsys, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("sweep")
    law = {"E": 1.9, "A": 300.0, "B": 900.0, "alpha": 0.35, "beta": 0.33}
    for n in (2e7, 5e7, 1e8, 3e8):
        for d in (1e9, 3e9, 1e10):
            with mlflow.start_run():
                mlflow.log_params({"n_params": n, "tokens": d})
                final = float(predict_nd(law, n, d))
                for step in range(1, 6):
                    mlflow.log_metric("loss", final + 2.0 / step, step=step * 100)
                mlflow.log_metric("final_loss", final)
    r = cli_json(capsys, "fit", "nd", "mlflow:sweep", "--tracking-uri", uri, "--n-col", "params.n_params",
                 "--d-col", "params.tokens", "--loss-col", "metrics.final_loss")
    assert r["alpha"] == pytest.approx(0.35, rel=0.05) and r["n_points"] == 12
    c = cli_json(capsys, "fit", "curve", "mlflow:sweep", "--tracking-uri", uri, "--loss-col", "loss")
    assert c["envelope"] is True and c["runs"] == 12


@pytest.mark.parametrize("args, flag", [
    (["optimal", "--flops", "0"], "--flops"),
    (["optimal", "--flops", "-1e20"], "--flops"),
    (["optimal", "--flops", "1e21", "--law", "nope"], "--law"),
    (["optimal"], "budget"),
    (["fit", "nd", "missing.csv", "--n-col", "N", "--d-col", "D"], "DATA"),
])
def test_bad_input_is_one_line_with_exit_2(args, flag):
    out = run_cli(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and flag in out.stderr


def test_misnamed_column_lists_the_columns(tmp_path):
    (tmp_path / "runs.csv").write_text("N,D,loss\n1e8,1e9,3.0\n")
    out = run_cli("fit", "nd", str(tmp_path / "runs.csv"), "--n-col", "params", "--d-col", "D")
    assert out.returncode == 2 and "no column 'params'" in out.stderr and "N, D, loss" in out.stderr


def test_a_fit_that_does_not_converge_says_so_and_exits_non_zero(tmp_path, published_data):
    out = run_cli("fit", "nd", str(published_data / "chinchilla_fig4_epoch.csv"), *CHINCHILLA_COLS,
                  "--max-iter", "2", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["converged"] is False
    assert "did not converge" in out.stderr and "best found" in out.stderr


@pytest.mark.slow
def test_the_readme_fit_examples_run_as_written_on_the_shipped_data(tmp_path):
    """The `planner fit` block of the README, command for command (the MLflow one needs the ladder example)."""
    import re
    import shlex
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    block = re.search(r"## `planner fit`.*?```bash\n(.*?)```", (repo / "README.md").read_text(), re.S).group(1)
    commands = [c.split("#")[0] for c in block.replace("\\\n", " ").splitlines()]
    runs = [c for c in commands if c.startswith(".venv/bin/planner fit") and "mlflow:" not in c]
    variables = {k: v.strip() for k, v in (c.split("=", 1) for c in commands if re.match(r"^[A-Z]+=", c))}
    assert len(runs) == 2
    for command in runs:
        args = [variables.get(a[1:], a) for a in shlex.split(command)][1:]
        args = [str(repo / a) if a.startswith("data/") else a for a in args]
        r = subprocess.run([sys.executable, "-m", "planner.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "law.json").is_file() and (tmp_path / "curve.png").stat().st_size > 1000
