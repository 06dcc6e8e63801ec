"""`launch demo`: the loop on CPU, told truthfully: curate real text, a model ladder, a law that must
predict a run it has not seen, and a re-plan only from a law that earned it.

1. build a corpus from text this machine has installed (docstrings of the standard library and the installed
   packages, manual pages: `pretrain.data.installed_text`, deterministic), mix it with the shipped finance sample
   (BloombergGPT-style), curate it with our pipeline, train its tokenizer, pack (`configs/data-demo.yaml`);
2. design a model ladder on it (`planner ladder`: sizes x token counts, lr by width, fan-in init, batch in
   tokens) with one larger held-out run;
3. train the ladder's runs (one process each, two at a time: this machine's two cores), nested in MLflow
   under the ladder's parent run;
4. fit L(N, D) on the ladder and predict the held-out run's eval loss before it trains;
5. train the held-out run through `launch local` on 2 processes with a real engine (DeepSpeed ZeRO-2 or
   FSDP); its MLflow run logs `loss_predicted` beside `eval_loss`;
6. report: the held-out error with its bootstrap band, whether the ladder is monotone in size, labelled
   plots, and the re-plan with its ranges, or the refusal when the law did not converge or missed the held-out
   run (`planner.laws.ladder.usable`). The
   report run in MLflow logs the fitted constants, the error and the re-plan as params and metrics.

`--sample` runs the earlier small demo instead: the shipped templated sample alone, a smaller ladder (the
test suite runs it with `--quick`). Everything lives under the demo folder: the data, the ladder, the SQLite
store and its artifacts. Rerunning continues: finished stages and runs are kept. A second demo in the same
folder while one runs is refused (a lock file held with flock).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import atomic_write_text
from planner.laws import ladder

REPO = Path(__file__).resolve().parents[1]
WORLD = 2  # processes of the held-out run, and ladder runs trained at once
EXPERIMENT = "demo-ladder"
REPORT_EXPERIMENT = "demo-report"  # kept apart so the ladder's experiment holds only training runs


@dataclass(frozen=True)
class Setup:
    """One demo: its corpus (a data config, and installed text to build first), its ladder and its budgets."""

    name: str
    data_config: str
    overrides: tuple[str, ...]
    installed_bytes: tuple[tuple[str, int], ...]  # (kind, bytes) of installed text written before curation
    design: dict
    budgets: dict  # full | quick: (ladder FLOPs, held-out FLOPs, batch in tokens)
    micro_batch: int
    eval_batches: int


#: The real-text demo. Design rule, measured on this 2-core machine (2026-12-06): every size trains on the same
#: token counts (tokens_exponent 0: the smallest sizes train long enough to level off, the largest start past the
#: first plateau; with tokens per parameter fixed instead, E was not identified and the x1 runs of widths 16-32 sat
#: on the unigram plateau); 371 steps at least; lr 0.01 x 64/width (a sweep at width 64 and 128: 0.01 and 0.005
#: best); widths 8-64 span 8.6x in parameters; the held-out width 128 is 2.7x the largest; the largest runs see
#: 380k of the 2M training tokens (a fifth: none memorises).
INSTALLED = Setup(
    name="installed", data_config="configs/data-demo.yaml", overrides=(),
    installed_bytes=(("docstring", 3 << 19), ("man", 7 << 20)),
    design={"widths": [8, 16, 32, 64], "holdout_width": 128, "layers": 1, "vocab": 1024, "seq_len": 128,
            "multiples": [1, 2, 4], "lr_ref": 0.01, "tokens_exponent": 0.0},
    budgets={"full": (1.56e12, 1.25e12, 256), "quick": (7.8e11, 6e11, 256)}, micro_batch=2, eval_batches=64)
#: The earlier small demo on the shipped templated sample (measured: monotone in size with lr 0.005 x 64/width;
#: at 0.01 the h32 run stalled on the unigram plateau). Its largest runs stay within about one epoch of the 267k
#: training tokens; --quick halves the budgets for the tests. Its tokenizer has no sentinels: with T5's 100 in its
#: 512 tokens the ladder lost its order in size at the smallest token multiple (measured 2026-12-06).
SAMPLE = Setup(
    name="sample", data_config="configs/data-sample.yaml",
    overrides=("mix.seq_len=128", "tokenizer.vocab_size=512", "tokenizer.sentinels=0"), installed_bytes=(),
    design={"widths": [16, 24, 32], "holdout_width": 48, "layers": 2, "vocab": 512, "seq_len": 128,
            "multiples": [1, 2, 4], "lr_ref": 0.005},
    budgets={"full": (5e11, 2.5e11, 1024), "quick": (2.5e11, 1.2e11, 512)}, micro_batch=8, eval_batches=16)
BOOTSTRAP = 30


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


def stage_data(out: Path, setup: Setup, progress: bool) -> Path:
    from pretrain.data.config import load_pipeline_config
    from pretrain.data.executors import curate
    from pretrain.data.mix import pack
    from pretrain.data.report import render_funnel
    from pretrain.data.shards import MANIFEST
    from pretrain.data.tokenizer import train_tokenizer
    from pretrain.data.workdir import WorkDir

    data_dir = out / "data"
    cfg = load_pipeline_config(REPO / setup.data_config, [f"out_dir={data_dir}", *setup.overrides])
    cfg.sources = [type(s)(**{**s.__dict__, "path": str(_source_path(s.path, data_dir))}) for s in cfg.sources]
    if (WorkDir(data_dir).shards("train") / MANIFEST).is_file():
        _log(f"1/6 data: already curated and packed in {data_dir}")
        return data_dir
    if setup.installed_bytes:
        _log("1/6 building a corpus from the text this machine has installed (docstrings, manual pages)")
        _write_installed(data_dir / "installed", setup.installed_bytes)
    _log(f"1/6 curating {', '.join(sorted({s.domain for s in cfg.sources}))} and training the tokenizer")
    report = curate(cfg, tasks=2, workers=2, quiet=not progress)  # this machine's two cores
    print(render_funnel(report))
    train_tokenizer(cfg)
    pack(cfg, progress=progress)
    return data_dir


def _source_path(path: str, data_dir: Path) -> Path:
    """`installed/<kind>.jsonl` is written by the demo into its data folder; any other path is the repository's."""
    return data_dir / path if path.startswith("installed/") else REPO / path


def _write_installed(folder: Path, kinds: tuple[tuple[str, int], ...]) -> None:
    from pretrain.data.installed_text import write_corpus

    for kind, size in kinds:
        for name, w in write_corpus(folder, size, kinds=(kind,)).items():
            print(f"  {name}: {w['docs']:,} documents, {w['bytes'] / 2**20:.1f} MiB")


def stage_design(out: Path, data_dir: Path, setup: Setup, engine: str, quick: bool) -> dict:
    from pretrain.data.workdir import WorkDir

    shards = WorkDir(data_dir).shards
    ladder_flops, target_flops, batch_tokens = setup.budgets["quick" if quick else "full"]
    lad = ladder.design(**setup.design, ladder_flops=ladder_flops, target_flops=target_flops,
                        batch_tokens=batch_tokens)
    if not (out / ladder.LADDER_FILE).is_file():
        ladder.write(lad, str(out), train=str(shards("train")), eval_data=str(shards("eval")),
                     micro_batch=setup.micro_batch, experiment=EXPERIMENT, bootstrap=BOOTSTRAP, python=sys.executable,
                     holdout_engine=engine, holdout_gpus=WORLD, eval_batches=setup.eval_batches)
    _log(f"2/6 a ladder of {len(lad.points) - 1} runs ({lad.spent_flops:.2g} model FLOPs) and one held-out run "
         f"({lad.target_flops:.2g} FLOPs, {engine} on {WORLD} processes)")
    for p in lad.points:
        print(f"  {p.name:<24} {p.params:>8,} params {p.tokens:>9,} tokens  lr {p.lr:.4g}"
              f"{'  (held out)' if p.held_out else ''}")
    return ladder.load_ladder(out)  # typed: a hand-edited or damaged ladder.json fails here, naming the key


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _train(out: Path, point: dict) -> None:
    """One point, by the command run_ladder.sh uses for it; its output goes to the point's train.log."""
    folder = out / "points" / point["name"]
    if (folder / "run/summary.json").is_file():
        return  # finished earlier: not retrained
    cmd = ladder.train_command(sys.executable, folder, ladder_plan(folder))
    with (folder / "train.log").open("w") as log:
        code = subprocess.call(["bash", "-c", cmd], cwd=folder, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise PlannerError(f"demo: run {point['name']} failed (exit {code}); see {folder / 'train.log'}")


def ladder_plan(folder: Path):
    """The layout a ladder point's run.yaml holds (read through the one run schema)."""
    from planner.core.schema import load_config

    return load_config(folder / "run.yaml").parallel


def stage_train_ladder(out: Path, meta: dict, progress: bool) -> None:
    """The ladder's runs, `WORLD` at a time (each is one process: this machine's cores); the MLflow store, its
    experiment and the ladder's parent run are made first, so the runs do not race to create them."""
    from mlflow.tracking import MlflowClient
    from tqdm import tqdm

    from pretrain.tracking import experiment_id, parent_run

    uri = tracking_uri(out)
    client = MlflowClient(uri)
    parent_run(client, experiment_id(client, EXPERIMENT, uri), ladder.PARENT_RUN)
    _drop_empty_default(client)
    points = [p for p in meta["points"] if not p["held_out"]]
    _log(f"3/6 training the ladder's {len(points)} runs (one process each, {WORLD} at a time)")
    with tqdm(total=len(points), desc="ladder", unit="run", disable=not progress) as bar, \
            ThreadPoolExecutor(WORLD) as pool:
        for _ in pool.map(lambda p: _train(out, p), points):
            bar.update()


def _drop_empty_default(client) -> None:
    """MLflow makes an experiment 'Default' (id 0) in every new store; the demo's store holds its own two only."""
    default = client.get_experiment("0")
    if default.lifecycle_stage == "active" and not client.search_runs(["0"], max_results=1):
        client.delete_experiment("0")


def stage_predict(out: Path) -> dict:
    if (out / ladder.PREDICTION_FILE).is_file():
        _log(f"4/6 the held-out prediction was made earlier ({out / ladder.PREDICTION_FILE})")
        return ladder.load_prediction(out, ladder.load_ladder(out))
    _log("4/6 fitting L(N, D) on the ladder and predicting the held-out run before it trains")
    pred = ladder.predict(out, BOOTSTRAP)
    low, high = pred["band"]
    print(f"  law: {', '.join(f'{k} {v:.4g}' for k, v in pred['law'].items())}"
          f"{'' if pred['converged'] else ' (NOT converged)'}")
    if pred["converged"] and pred["message"]:
        print(f"  note: {pred['message']}")
    print(f"  held-out {pred['held_out']}: predicted eval loss {pred['loss_predicted']:.4f} "
          f"(95% band {low:.4f}-{high:.4f})")
    return pred


def stage_train_held_out(out: Path, meta: dict, engine: str) -> None:
    held = next(p for p in meta["points"] if p["held_out"])
    _log(f"5/6 training the held-out run {held['name']} through `launch local` ({engine}, {WORLD} processes)")
    _train(out, held)


def stage_report(out: Path, meta: dict, setup: Setup) -> tuple[Path, dict]:
    _log("6/6 the held-out error, the monotonicity check, the plots and the re-plan (or the refusal)")
    result = ladder.report(out)
    reports = out / "report"
    reports.mkdir(exist_ok=True)
    runs = _runs(out)
    _plot_law(meta, result, runs, reports / "nd.png")
    _plot_runs(runs, reports)
    text = render_report(meta, result, runs, setup)
    path = atomic_write_text(reports / "REPORT.md", text)
    print(text.split("## Runs")[0].split("\n", 2)[2])
    _log_report(out, reports, result)
    return path, result


def _runs(out: Path) -> list[dict]:
    from mlflow.tracking import MlflowClient

    from pretrain.tracking import PARENT_TAG

    client = MlflowClient(tracking_uri(out))
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = []
    for run in client.search_runs([exp.experiment_id]):
        if run.data.tags.get(PARENT_TAG):
            continue  # the ladder's parent run: its children are the runs
        m, p = run.data.metrics, run.data.params
        history = client.get_metric_history(run.info.run_id, "loss")
        runs.append({"name": run.info.run_name, "n_params": int(p["n_params"]), "tokens": int(p["train_tokens"]),
                     "loss": m.get("loss"), "eval_loss": m.get("eval_loss"),
                     "measured": m.get("model_state_bytes_measured"), "predicted": m.get("model_state_bytes_predicted"),
                     "tokens_per_s": m.get("tokens_per_s"), "curve": [(h.step, h.value) for h in history]})
    return sorted(runs, key=lambda r: (r["n_params"], r["tokens"]))


def tracking_uri(out: Path) -> str:
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def _plot_law(meta: dict, result: dict, runs: list[dict], path: Path) -> None:
    import numpy as np

    from planner.laws.fit import FitResult
    from planner.report.plots import plot_nd

    ladder_names = {p["name"] for p in meta["points"] if not p["held_out"]}
    fitted = [r for r in runs if r["name"] in ladder_names]
    held = next(p for p in meta["points"] if p["held_out"])
    law = FitResult("nd", result["law"], converged=result["converged"], message=result["message"])
    n, d, loss = (np.array([r[k] for r in fitted]) for k in ("n_params", "tokens", "eval_loss"))
    plot_nd(law, n, d, loss, path, held_out={"n": held["params"], "measured": result["loss_measured"],
                                              "predicted": result["loss_predicted"]})


def _plot_runs(runs: list[dict], reports: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for r in runs:
        ax.plot(*zip(*r["curve"], strict=True), label=f"{r['name']} ({r['n_params'] / 1e3:.0f}k params)")
    ax.set(xlabel="optimizer step", ylabel="train loss (nats/token)", title="Loss curves of the ladder", yscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(reports / "loss_curves.png")
    plt.close(fig)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    kib = FuncFormatter(lambda v, _: f"{v / 1024:,.0f}")
    ax1.scatter([r["predicted"] for r in runs], [r["measured"] for r in runs])
    lim = max(r["predicted"] or 0 for r in runs) * 1.1
    ax1.plot([0, lim], [0, lim], "k--", lw=0.8, label="measured = predicted")
    ax1.xaxis.set_major_formatter(kib)
    ax1.yaxis.set_major_formatter(kib)
    ax1.set(xlabel="predicted model-state KiB per rank", ylabel="measured KiB", title="Memory: planner vs engine")
    ax1.legend(fontsize=8)
    ax2.barh([r["name"] for r in runs], [r["tokens_per_s"] or 0 for r in runs])
    ax2.xaxis.set_major_locator(MaxNLocator(5))
    ax2.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e3:.0f}k"))
    ax2.tick_params(axis="y", labelsize=7)
    ax2.set(xlabel="measured tokens/s (CPU)", title="Throughput")
    fig.tight_layout()
    fig.savefig(reports / "memory_throughput.png")
    plt.close(fig)


#: What each demo's data is, in the report's title and closing paragraph.
ABOUT = {
    "installed": ("a model ladder on installed documentation and finance text",
                  "The corpus is real text this machine has installed (docstrings and manual pages) with the shipped "
                  "finance sample, curated by our pipeline (`data/curation_report.md`). The largest runs see a fifth "
                  "of the 2M training tokens: none memorises."),
    "sample": ("a model ladder on the sample corpus",
               "The sample corpus is written from templates, so its loss keeps falling as models memorise them; "
               "L(N, D) with a floor E describes it poorly. The ladder on the generated source with a known "
               "entropy rate (benchmarks/bench_ladder.py) is where the law is tested against the truth."),
}


def render_report(meta: dict, r: dict, runs: list[dict], setup: Setup) -> str:
    title, closing = ABOUT[setup.name]
    low, high = r["band"]
    law = r["law"]
    lines = [
        f"# Demo report: {title}, and a law that must predict a run it has not seen", "",
        f"- Law fitted on {r['fitted_on']} ladder runs: L = {law['E']:.3f} + {law['A']:.4g}/N^{law['alpha']:.3f} + "
        f"{law['B']:.4g}/D^{law['beta']:.3f} ({'converged' if r['converged'] else 'NOT converged: ' + r['message']}).",
        f"- Held-out run {r['held_out']}: predicted {r['loss_predicted']:.4f} (95% bootstrap band {low:.4f}-{high:.4f}), "
        f"measured {r['loss_measured']:.4f}: error {r['error']:+.2%}.",
        f"- Ladder {ladder.describe_monotone(r['monotone'])}.",
    ]
    if r["converged"] and r["message"]:
        lines.insert(3, f"- Note: {r['message']}.")
    if r["usable"]:
        text = ladder.describe_replan(r["replan"])
        lines.append(f"- {text[0].upper()}{text[1:]}.")
    else:
        lines.append(f"- Not used to re-plan: {r['refusal']}.")
    lines += ["", "![the law, its isoFLOP curves and the held-out run](nd.png)", "", "## Runs", "",
              "| run | params | tokens | eval loss | model-state bytes measured / predicted | tokens/s |",
              "|---|---|---|---|---|---|",
              *[f"| {x['name']} | {x['n_params']:,} | {x['tokens']:,} | {x['eval_loss']:.4f} | "
                f"{x['measured']:,.0f} / {x['predicted']:,.0f} | {x['tokens_per_s']:,.0f} |" for x in runs], "",
              "![loss curves](loss_curves.png)", "", "![memory and throughput](memory_throughput.png)", "",
              closing, ""]
    return "\n".join(lines)


def _log_report(out: Path, reports: Path, r: dict) -> None:
    """The report run: fitted constants, held-out error and re-plan as params and metrics, plus the files."""
    from mlflow.tracking import MlflowClient

    from pretrain.tracking import experiment_id

    uri = tracking_uri(out)
    client = MlflowClient(uri)
    exp_id = experiment_id(client, REPORT_EXPERIMENT, uri)
    for old in client.search_runs([exp_id]):
        client.delete_run(old.info.run_id)  # a rerun replaces the report rather than adding a second one
    run_id = client.create_run(exp_id, run_name="demo-report").info.run_id
    params = {"held_out": r["held_out"], "converged": r["converged"], "usable": r["usable"],
              "monotone": r["monotone"]["ok"], "refusal": r["refusal"][:500] or "-", "fitted_on": r["fitted_on"],
              **{f"law_{k}": f"{v:.6g}" for k, v in r["law"].items()}}
    metrics = {"loss_predicted": r["loss_predicted"], "loss_predicted_low": r["band"][0],
               "loss_predicted_high": r["band"][1], "loss_measured": r["loss_measured"], "held_out_error": r["error"],
               "monotone": float(r["monotone"]["ok"]), **{f"law_{k}": v for k, v in r["law"].items()}}
    if r["usable"]:
        metrics.update({f"replan_{k}": r["replan"][k] for k in ("params", "tokens", "loss")})
        for key, (low, high) in r["replan"].get("band", {}).items():  # the bootstrap's 95% range of each
            metrics.update({f"replan_{key}_low": low, f"replan_{key}_high": high})
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    client.log_artifacts(run_id, str(reports), artifact_path="report")
    for name in (ladder.LADDER_FILE, ladder.PREDICTION_FILE, ladder.REPORT_FILE):
        client.log_artifact(run_id, str(out / name), artifact_path="ladder")
    client.set_terminated(run_id)


def run_demo(out: str | Path, engine: str = "deepspeed", quick: bool = False, progress: bool = True,
             sample: bool = False) -> Path:
    try:
        out = Path(out).resolve()
    except RuntimeError as exc:  # pathlib's "Symlink loop from ..."
        raise PlannerError(f"--out: {exc}") from None
    if engine not in ("deepspeed", "fsdp"):
        raise PlannerError(f"--engine: {engine!r} is not one of deepspeed, fsdp")
    setup = SAMPLE if sample else INSTALLED
    with demo_lock(out):
        data_dir = stage_data(out, setup, progress)
        meta = stage_design(out, data_dir, setup, engine, quick)
        stage_train_ladder(out, meta, progress)
        stage_predict(out)
        stage_train_held_out(out, meta, engine)
        report, _ = stage_report(out, meta, setup)
    _log(f"done: {report}; open the runs with `mlflow ui --backend-store-uri {tracking_uri(out)}`")
    return report
