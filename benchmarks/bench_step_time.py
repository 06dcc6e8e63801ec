"""The step-time model (planner/compute/step_time.py) against published iteration times.

Fitted on one named table only: Narayanan et al. 2021, Table 1 (Megatron-LM weak scaling, 1.7B to
1T on A100 80GB, data/published/megatron_narayanan2021_table1.csv). Its three constants (matmul
efficiency at large width, the width at half of it, achieved link fraction) are least squares on
log time, shared by every row. Reported:

- every row's error with all ten rows in the fit, and with that row left out (leave-one-out);
- checks never fitted: Korthikanti et al. 2022, Table 5, full-recompute column (the same software
  family and GPU, other layouts and batches), from data/published/other_checks.csv.

    .venv/bin/python benchmarks/bench_step_time.py
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from planner.compute.step_time import A100_80GB_DGX, Efficiency, Layout, megatron_flops, step_time

DATA = Path(__file__).resolve().parents[1] / "data" / "published"


def calibration_rows() -> list[tuple[str, Layout, float]]:
    """(name, layout, measured seconds per iteration) of Narayanan et al. 2021, Table 1: the time
    follows from the achieved teraFLOP/s per GPU and the paper's own FLOP count."""
    rows = []
    for r in csv.DictReader((DATA / "megatron_narayanan2021_table1.csv").open()):
        virtual = int(r["num_layers_per_virtual_pipeline_stage_script"] or 0)
        layers, pp = int(r["num_layers"]), int(r["pp"])
        x = Layout(layers=layers, hidden=int(r["hidden_size"]), seq_len=int(r["seq_len"]),
                   vocab=int(r["vocab_size"]), global_batch=int(r["global_batch_size"]),
                   micro_batch=int(r["micro_batch_size_script"]), tp=int(r["tp"]), pp=pp,
                   dp=int(r["num_gpus"]) // (int(r["tp"]) * pp),
                   pp_virtual=layers // (pp * virtual) if virtual else 1)
        measured = megatron_flops(x) / (int(r["num_gpus"]) * float(r["tflops_per_gpu"]) * 1e12)
        rows.append((r["model"], x, measured))
    return rows


def check_rows() -> list[tuple[str, Layout, float]]:
    """Korthikanti et al. 2022, Table 5, full recomputation (iteration times as published)."""
    rows = []
    for r in csv.DictReader((DATA / "other_checks.csv").open()):
        if not (r["check_id"].startswith("korthikanti2022") and r["recompute"] == "full"):
            continue
        tp, pp = int(r["tp"]), int(r["pp"])
        x = Layout(layers=int(r["num_layers"]), hidden=int(r["hidden_size"]), seq_len=int(r["seq_len"]),
                   vocab=int(r["vocab_size"]), global_batch=int(r["global_batch_size"]),
                   micro_batch=int(r["micro_batch_size"]), tp=tp, pp=pp, dp=int(r["num_gpus"]) // (tp * pp),
                   pp_virtual=int(r["pp_virtual"] or 1))
        rows.append((r["check_id"], x, float(r["iteration_time_s"])))
    return rows


def predict(x: Layout, theta) -> float:
    return step_time(x, A100_80GB_DGX, Efficiency(*theta)).total_s


def fit(rows) -> np.ndarray:
    def residuals(theta):
        return [math.log(predict(x, theta) / t) for _, x, t in rows]

    start = Efficiency()
    return least_squares(residuals, [start.matmul_max, start.matmul_half_k, start.link],
                         bounds=([0.1, 1.0, 0.05], [1.0, 1e5, 1.0])).x


def report(title: str, rows, theta, loo: dict[str, float] | None = None) -> list[float]:
    print(f"\n{title}")
    print(f"{'row':<28} {'measured s':>10} {'predicted s':>11} {'error':>8}" + ("  left out" if loo else ""))
    errors = []
    for name, x, t in rows:
        e = predict(x, theta) / t - 1
        errors.append(abs(e))
        held = f"  {loo[name]:+8.1%}" if loo else ""
        print(f"{name:<28} {t:>10.3f} {predict(x, theta):>11.3f} {e:>+8.1%}{held}")
    print(f"mean |error| {np.mean(errors):.1%}, worst {np.max(errors):.1%}")
    return errors


def main() -> None:
    cal, checks = calibration_rows(), check_rows()
    theta = fit(cal)
    print(f"fitted on Narayanan et al. 2021 Table 1: matmul_max {theta[0]:.3f}, matmul_half_k {theta[1]:.1f}, "
          f"link {theta[2]:.3f}")
    loo = {}
    for i, (name, x, t) in enumerate(cal):
        loo[name] = predict(x, fit(cal[:i] + cal[i + 1:])) / t - 1
    report("calibration: Narayanan et al. 2021, Table 1 (in the fit; right column: fit without that row)",
           cal, theta, loo)
    print(f"leave-one-out mean |error| {np.mean(np.abs(list(loo.values()))):.1%}, "
          f"worst {np.max(np.abs(list(loo.values()))):.1%}")
    report("check, never fitted: Korthikanti et al. 2022, Table 5 (full recomputation)", checks, theta)


if __name__ == "__main__":
    main()
