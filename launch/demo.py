"""`launch demo`: the whole loop on CPU, from raw text to a law fitted on our own runs and a new plan.

1. curate the shipped finance + general sample corpus and train its tokenizer (pretrain.data.pipeline);
2. plan a small scaling sweep (model sizes x token budgets) and emit a run config per point (planner emit);
3. train every point through `launch local` on 2 processes with a real engine, tracked in MLflow;
4. fit the loss-curve frontier and L(N, D) from the MLflow runs (planner fit);
5. re-plan with the fitted law and print it beside Chinchilla's for a stated budget (planner optimal);
6. write a report (Markdown + PNG plots) and log it to MLflow.

Rerunning continues: finished stages and finished runs are kept. A second demo in the same folder
while one runs is refused (a lock file held with flock).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlannerError
from planner.io import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 128
MICRO_BATCH = 8
WORLD = 2
EXPERIMENT = "demo-sweep"
REPORT_EXPERIMENT = "demo-report"  # kept apart so the sweep experiment holds only training runs


@dataclass(frozen=True)
class Point:
    hidden: int
    layers: int
    tokens: int

    @property
    def name(self) -> str:
        return f"h{self.hidden}-l{self.layers}-t{self.tokens // 1000}k"


def sweep(quick: bool) -> list[Point]:
    """Model sizes x token budgets, tiny enough for a CPU (each budget is whole steps of 2,048 tokens)."""
    sizes = [(32, 2), (64, 2), (96, 3)]  # approach 3 needs >= 3 distinct sizes and token counts
    budgets = [20_480, 40_960, 61_440] if quick else [61_440, 122_880, 245_760]
    return [Point(h, layers, t) for h, layers in sizes for t in budgets]


@contextmanager
def demo_lock(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    handle = (out / ".demo.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise PlannerError(f"demo: another demo is running in {out} (pid {handle.read().strip() or '?'}); "
                           "wait for it or use another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def stage_data(out: Path, progress: bool) -> Path:
    from pretrain.data.pipeline import curate, load_pipeline_config, pack, render_funnel, train_tokenizer

    data_dir = out / "data"
    cfg = load_pipeline_config(REPO / "configs/data-sample.yaml",
                               [f"out_dir={data_dir}", f"mix.seq_len={SEQ_LEN}", "tokenizer.vocab_size=2048"])
    cfg.sources = [type(s)(**{**s.__dict__, "path": str(REPO / s.path)}) for s in cfg.sources]
    if (data_dir / "shards/train/manifest.json").is_file():
        _log(f"1/6 data: already curated and packed in {data_dir}")
        return data_dir
    _log("1/6 curating the finance + general sample corpus and training its tokenizer")
    report = curate(cfg, progress=progress)
    print(render_funnel(report))
    train_tokenizer(cfg)
    pack(cfg, progress=progress)
    return data_dir


def stage_plan(out: Path, data_dir: Path, points: list[Point], engine: str) -> dict[str, Path]:
    from planner.cli import main as planner_main

    _log(f"2/6 planning a sweep of {len(points)} runs (sizes x token budgets) and emitting run configs")
    configs = {}
    engine_flags = ["--zero", "2"] if engine == "deepspeed" else ["--fsdp", "full"]
    for p in points:
        folder = out / "runs" / p.name
        if not (folder / "run.yaml").is_file():
            args = [
                "emit", "--out", str(folder), "--name", p.name, "--layers", str(p.layers), "--hidden", str(p.hidden),
                "--heads", str(p.hidden // 16), "--vocab", "2048", "--seq-len", str(SEQ_LEN), "--gpus", str(WORLD),
                "--gpus-per-node", str(WORLD), "--micro-batch", str(MICRO_BATCH), "--precision", "fp32",
                "--batch-tokens", str(MICRO_BATCH * SEQ_LEN * WORLD), "--tokens", str(p.tokens), "--lr", "0.01",
                "--data", str(data_dir / "shards/train"), "--eval-data", str(data_dir / "shards/eval"),
                "--tokenizer", str(data_dir / "tokenizer.json"), "--checkpoint-every", "1000000",
                "--eval-every", "1000000", "--tracking-uri", tracking_uri(out), "--experiment", EXPERIMENT,
                *engine_flags]
            with contextlib.redirect_stdout(io.StringIO()):  # nine lists of "wrote ..." are noise here
                code = planner_main(args)
            if code:
                raise PlannerError(f"demo: planner emit failed for {p.name}")
        configs[p.name] = folder / "run.yaml"
    return configs


def tracking_uri(out: Path) -> str:
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def stage_train(out: Path, configs: dict[str, Path], progress: bool) -> None:
    from tqdm import tqdm

    _log(f"3/6 training {len(configs)} runs through `launch local` on {WORLD} processes")
    bar = tqdm(configs.items(), desc="sweep", unit="run", disable=not progress)
    for name, config in bar:
        folder = config.parent
        if (folder / "runs" / name / "summary.json").is_file():
            continue  # finished earlier: not retrained
        bar.set_postfix_str(name)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
        with (folder / "train.log").open("w") as log:
            code = subprocess.call([sys.executable, "-m", "launch.cli", "local", "run.yaml", "--nproc", str(WORLD),
                                    "train.log_every=1"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        if code:
            raise PlannerError(f"demo: run {name} failed (exit {code}); see {folder / 'train.log'}")


def stage_fit(out: Path) -> dict:
    from planner.cli import main as planner_main

    _log("4/6 fitting the loss-curve frontier and L(N, D) from the MLflow runs")
    fits = out / "fits"
    fits.mkdir(exist_ok=True)
    uri = tracking_uri(out)
    curve = ["fit", "curve", f"mlflow:{EXPERIMENT}", "--tracking-uri", uri, "--loss-col", "loss",
             "--x-col", "flops_seen", "--min-x", "1e10", "--bootstrap", "50", "--out", str(fits / "curve.json"),
             "--plot", str(fits / "curve.png")]
    nd = ["fit", "nd", f"mlflow:{EXPERIMENT}", "--tracking-uri", uri, "--n-col", "params.n_params",
          "--d-col", "params.train_tokens", "--loss-col", "metrics.eval_loss", "--bootstrap", "20",
          "--out", str(fits / "law.json"), "--plot", str(fits / "nd.png")]
    results = {}
    for name, args in (("curve", curve), ("nd", nd)):
        code = planner_main(args)
        if code not in (0, 1):  # 1: fitted but not converged, reported in the file
            raise PlannerError(f"demo: planner fit {name} failed")
        results[name] = json.loads((fits / f"{'law' if name == 'nd' else 'curve'}.json").read_text())
    return results


BUDGET_FLOPS = 1e21  # the stated budget both laws plan for (about 30 A100-hours at 40% MFU)


def stage_replan(out: Path) -> dict:
    from planner.optimal import optimal_for_budget

    _log(f"5/6 re-planning a {BUDGET_FLOPS:.0e} FLOP budget with Chinchilla's law and with ours")
    plans = {law: optimal_for_budget("flops", BUDGET_FLOPS, law_name=law)
             for law in ("chinchilla", str(out / "fits/law.json"))}
    rows = [("", "Chinchilla (Hoffmann et al. 2022)", "fitted on this sweep")]
    a, b = plans.values()
    for label, key, fmt in (("parameters N*", "params", "{:.3g}"), ("tokens D*", "tokens", "{:.3g}"),
                            ("tokens per parameter", "tokens_per_param", "{:.1f}"), ("predicted loss", "loss", "{:.3f}")):
        rows.append((label, fmt.format(a[key]), fmt.format(b[key])))
    table = "\n".join(f"{r[0]:<22} {r[1]:>34} {r[2]:>22}" for r in rows)
    print(table)
    atomic_write_json(out / "fits/replan.json", {"budget_flops": BUDGET_FLOPS, "plans": plans})
    return {"table": table, "plans": plans}


def _runs(out: Path) -> list[dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(out))
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = []
    for run in client.search_runs([exp.experiment_id]):
        m, p = run.data.metrics, run.data.params
        history = client.get_metric_history(run.info.run_id, "loss")
        runs.append({"name": run.info.run_name, "run_id": run.info.run_id, "n_params": int(p["n_params"]),
                     "tokens": int(p["train_tokens"]), "loss": m.get("loss"), "eval_loss": m.get("eval_loss"),
                     "measured": m.get("model_state_bytes_measured"), "predicted": m.get("model_state_bytes_predicted"),
                     "tokens_per_s": m.get("tokens_per_s"), "curve": [(h.step, h.value) for h in history]})
    return sorted(runs, key=lambda r: (r["n_params"], r["tokens"]))


def stage_report(out: Path, fits: dict, replan: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _log("6/6 writing the report and logging it to MLflow")
    runs, reports = _runs(out), out / "report"
    reports.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for r in runs:
        ax.plot(*zip(*r["curve"], strict=True), label=f"{r['name']} ({r['n_params'] / 1e3:.0f}k)")
    ax.set(xlabel="step", ylabel="train loss", title="Loss curves of the sweep", yscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(reports / "loss_curves.png")
    plt.close(fig)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    names = [r["name"] for r in runs]
    ax1.scatter([r["predicted"] for r in runs], [r["measured"] for r in runs])
    lim = max(r["predicted"] or 0 for r in runs) * 1.1
    ax1.plot([0, lim], [0, lim], "k--", lw=0.8)
    ax1.set(xlabel="predicted model-state bytes per rank", ylabel="measured", title="Memory: planner vs engine")
    ax2.barh(names, [r["tokens_per_s"] or 0 for r in runs])
    ax2.set(xlabel="measured tokens/s (CPU, 2 processes)", title="Throughput")
    fig.tight_layout()
    fig.savefig(reports / "memory_throughput.png")
    plt.close(fig)
    for name in ("curve.png", "nd.png"):
        (reports / name).write_bytes((out / "fits" / name).read_bytes())
    law, curve = fits["nd"], fits["curve"]
    lines = [
        "# Demo report: plan, curate, train, fit, re-plan", "",
        f"Sweep: {len(runs)} runs on {WORLD} CPU processes, tracked in MLflow experiment `{EXPERIMENT}` (this report: "
        f"experiment `{REPORT_EXPERIMENT}`) "
        f"(`mlflow ui --backend-store-uri {tracking_uri(out)}`).", "",
        "| run | params | tokens | final train loss | eval loss | model-state bytes measured / predicted | tokens/s |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['name']} | {r['n_params']:,} | {r['tokens']:,} | {r['loss']:.3f} | {r['eval_loss']:.3f} | "
          f"{r['measured']:,.0f} / {r['predicted']:,.0f} | {r['tokens_per_s']:,.0f} |" for r in runs], "",
        "## Fitted laws", "",
        f"- Loss-curve frontier (lower envelope over all runs, x = training FLOPs): "
        f"L = {curve['E']:.3f} + {curve['A']:.4g} x^-{curve['alpha']:.3f}"
        f"{'' if curve['converged'] else ' (did not converge)'}; ![curve](curve.png)",
        f"- L(N, D) = {law['E']:.3f} + {law['A']:.4g}/N^{law['alpha']:.3f} + {law['B']:.4g}/D^{law['beta']:.3f}"
        f" from {law['n_points']} runs{'' if law['converged'] else ' (did not converge)'}; ![nd](nd.png)", "",
        f"## Re-plan for {BUDGET_FLOPS:.0e} FLOPs", "", "```", replan["table"], "```", "",
        "A law fitted on a handful of tiny CPU runs extrapolates poorly to this budget: the point is the loop "
        "(the same commands run on a real sweep), not these numbers.", "",
        "![loss curves](loss_curves.png)", "", "![memory and throughput](memory_throughput.png)", "",
    ]
    path = atomic_write_text(reports / "REPORT.md", "\n".join(lines))
    _log_report(out, reports)
    return path


def _log_report(out: Path, reports: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(out))
    exp = client.get_experiment_by_name(REPORT_EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(REPORT_EXPERIMENT)
    existing = client.search_runs([exp_id])
    run_id = existing[0].info.run_id if existing else client.create_run(exp_id, run_name="demo-report").info.run_id
    client.log_artifacts(run_id, str(reports), artifact_path="report")
    client.log_artifacts(run_id, str(out / "fits"), artifact_path="fits")
    client.set_terminated(run_id)


def run_demo(out: str | Path, engine: str = "deepspeed", quick: bool = False, progress: bool = True) -> Path:
    out = Path(out).resolve()
    if engine not in ("deepspeed", "fsdp"):
        raise PlannerError(f"--engine: {engine!r} is not one of deepspeed, fsdp")
    with demo_lock(out):
        data_dir = stage_data(out, progress)
        configs = stage_plan(out, data_dir, sweep(quick), engine)
        stage_train(out, configs, progress)
        fits = stage_fit(out)
        replan = stage_replan(out)
        report = stage_report(out, fits, replan)
    _log(f"done: {report}; open the runs with `mlflow ui --backend-store-uri {tracking_uri(out)}`")
    return report
