"""`planner ladder`: a designed sweep whose fitted law must predict a run it has not seen.

Anchors: OLMo's model ladder (Bhagia et al. 2024: small runs -> predict a large run's loss) and
Chinchilla's approach 3 (Hoffmann et al. 2022: L(N, D) = E + A/N^alpha + B/D^beta over sizes x tokens).

Design (`design`), sizes x token multiples:
- sizes: one model per width, shapes from the planner (`planner.model.shapes.ModelShape`), heads of 16
  dimensions; the held-out size is wider than every ladder size;
- tokens: each size trains on m x k x N^g tokens for every multiple m, with k chosen so that the
  ladder's model FLOPs (6ND + attention, `planner.compute.flops`) add up to the ladder budget; g
  (`tokens_exponent`) is 1 by default (every size the same tokens per parameter, as Chinchilla's and
  OLMo's ladders), 0 gives every size the same token counts: the small sizes then train long enough to
  show where they level off and the large ones still start past the first plateau (a CPU ladder of
  sizes whose runs cost about the same per token);
- the held-out point: the held-out size at the target budget (D = C / flops per token);
- per-size hyperparameters, a stated rule: lr = LR_REF x (H_REF / hidden) (the 1/width scaling of
  muP's hidden layers, Yang et al. 2022), capped at LR_MAX; weights drawn with std 1/sqrt(hidden) (fan-in
  init, `init_std_for`: GPT-2's fixed 0.02 is that rule at width 2,500, and at widths 8-128 it leaves the
  logits so small that runs sit on the unigram plateau for hundreds of steps: measured, a width-24 run of
  474 steps ends at 4.91 with 0.02 and 4.21 with 1/sqrt(24)); warmup 5% of the steps; the batch fixed in
  tokens (`batch_tokens`) for every size.

The ladder's runs are ordinary run configs (one folder each, `run.yaml`); `run_ladder.sh` trains
the ladder, then `planner ladder predict` fits the finished runs (read back from MLflow with the
names the trainer logs: params.n_params, params.train_tokens, metrics.eval_loss) and writes the
held-out prediction into the held-out run's config before it trains; the trainer logs it as
`loss_predicted` beside its `eval_loss`. `planner ladder report` gives the held-out error with the
bootstrap band and refuses to re-plan from a law that did not converge, missed the held-out run by more than 5%, or
whose band does not hold the measured loss; a re-plan carries the band as ranges of N*, D* and loss.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from planner.compute import flops as compute
from planner.core import checks
from planner.core.errors import PlannerError
from planner.core.io import atomic_write_json, atomic_write_text, read_json
from planner.core.parallel import ENGINES, ParallelPlan, cli_flag
from planner.core.schema import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
    dump_config,
    load_config,
)
from planner.emit.command import python_command, render
from planner.model.shapes import ModelShape

LR_REF, H_REF, LR_MAX = 0.01, 64, 0.03
WARMUP_FRACTION = 0.05
HEAD_DIM = 16
#: A law is used to re-plan only when it predicted the held-out run (larger than every ladder run, trained after the
#: prediction) within this (relative), and the measured loss fell inside the prediction's 95% bootstrap band: the
#: held-out run is the test the law must pass; the band, however wide, is carried into the re-plan as ranges of N*
#: and D* (a case bootstrap over a dozen designed runs is wide by construction: resamples that lose a whole size
#: extrapolate from the others).
MAX_HELD_OUT_ERROR = 0.05
#: The shortest run a ladder point may be: fewer optimizer steps than this measure warm-up, not a law.
MIN_STEPS = 20
#: Token multiples (tokens = m x k x N): k is set by the budget, so only their ratios matter; past 1000 the
#: smallest multiple's runs are too short to train.
MAX_MULTIPLE = 1e3
#: Tokens per optimizer step: 2^24 (16.8M) is above the largest published LLM batches (Llama 3 405B: 16M).
MAX_BATCH_TOKENS = 1 << 24


@dataclass(frozen=True)
class LadderPoint:
    name: str
    layers: int
    hidden: int
    heads: int
    params: int
    tokens: int
    steps: int
    lr: float
    warmup_steps: int
    flops: float
    held_out: bool = False
    multiple: float = 0.0  # the token multiple m of a ladder point (tokens = m x k x N); 0 for the held-out run


@dataclass(frozen=True)
class Ladder:
    points: tuple[LadderPoint, ...]
    seq_len: int
    vocab: int
    batch_tokens: int
    ladder_flops: float
    target_flops: float

    @property
    def spent_flops(self) -> float:
        return sum(p.flops for p in self.points if not p.held_out)

    def to_dict(self) -> dict:
        return {"points": [asdict(p) for p in self.points], "seq_len": self.seq_len, "vocab": self.vocab,
                "batch_tokens": self.batch_tokens, "ladder_flops": self.ladder_flops,
                "target_flops": self.target_flops, "spent_flops": self.spent_flops,
                "held_out_flops": sum(p.flops for p in self.points if p.held_out)}


def lr_for(hidden: int, lr_ref: float = LR_REF) -> float:
    """lr_ref at width H_REF, scaled by 1/width, capped at LR_MAX."""
    return min(LR_MAX, lr_ref * H_REF / hidden)


def init_std_for(hidden: int) -> float:
    """Fan-in initialisation: std 1/sqrt(hidden) for every weight matrix of a ladder size."""
    return hidden ** -0.5


def shape_for(hidden: int, layers: int, vocab: int, seq_len: int) -> ModelShape:
    return ModelShape(layers, hidden, max(1, hidden // HEAD_DIM), vocab, seq_len)


def _point(shape: ModelShape, tokens: float, batch_tokens: int, lr_ref: float, held_out: bool = False,
           multiple: float = 0.0) -> LadderPoint:
    steps = max(1, round(tokens / batch_tokens))
    n = shape.param_count()
    flops = compute.model_flops_per_token(n, shape) * steps * batch_tokens
    name = f"h{shape.hidden}-l{shape.layers}-t{steps * batch_tokens // 1000}k" + ("-heldout" if held_out else "")
    return LadderPoint(name, shape.layers, shape.hidden, shape.heads, n, steps * batch_tokens, steps,
                       lr_for(shape.hidden, lr_ref), max(1, round(WARMUP_FRACTION * steps)), flops, held_out, multiple)


def _whole(value):
    """16.0 -> 16 (a width read as a float); anything else is left for `checks.integer` to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def design(*, widths: list[int], holdout_width: int, layers: int, vocab: int, seq_len: int, batch_tokens: int,
           ladder_flops: float, target_flops: float, multiples: list[float], lr_ref: float = LR_REF,
           tokens_exponent: float = 1.0) -> Ladder:
    """Sizes x token multiples spending `ladder_flops` (tokens = m x k x N^tokens_exponent), and one held-out
    run at `target_flops`."""
    checks.integer("--layers", layers, 1, 1000)
    checks.integer("--vocab", vocab, 2, 1 << 24)
    checks.integer("--seq-len", seq_len, 2, 1 << 20)
    checks.integer("--batch-tokens", batch_tokens, seq_len, MAX_BATCH_TOKENS)
    checks.number("--ladder-flops", ladder_flops, 1.0, compute.FLOPS_RANGE[1])
    checks.number("--target-flops", target_flops, 1.0, compute.FLOPS_RANGE[1])
    checks.number("--lr-ref", lr_ref, 1e-6, LR_MAX)
    checks.number("--tokens-exponent", tokens_exponent, 0.0, 1.0)
    widths = [checks.integer("--widths", _whole(w), 4, 1 << 16) for w in widths]
    checks.integer("--holdout-width", holdout_width, 4, 1 << 16)
    for m in multiples:
        checks.number("--multiples", m, 0.0, MAX_MULTIPLE, lo_open=True)
    if len(set(widths)) < 3 or len(set(multiples)) < 3:
        raise PlannerError("--widths and --multiples: the law has two exponents; give at least 3 distinct of each")
    for w in (*widths, holdout_width):
        heads = max(1, w // HEAD_DIM)
        if w % heads or (w // heads) % 2:
            raise PlannerError(f"--widths: {w} does not split into {heads} heads of an even size")
    if holdout_width <= max(widths):
        raise PlannerError(f"--holdout-width: {holdout_width} must be wider than every ladder width (max {max(widths)})")
    if batch_tokens % seq_len:
        raise PlannerError(f"--batch-tokens: {batch_tokens} is not a multiple of --seq-len {seq_len}")
    shapes = [shape_for(w, layers, vocab, seq_len) for w in sorted(set(widths))]
    per_token = [compute.model_flops_per_token(s.param_count(), s) for s in shapes]
    # tokens = k * m * N^g: the ladder's FLOPs are k * sum_m sum_i m * N_i^g * flops_per_token_i
    scale = [s.param_count() ** tokens_exponent for s in shapes]
    unit = sum(m * n * f for m in multiples for n, f in zip(scale, per_token, strict=True))
    k = ladder_flops / unit
    points = [_point(s, k * m * n, batch_tokens, lr_ref, multiple=m)
              for s, n in zip(shapes, scale, strict=True) for m in sorted(multiples)]
    held = shape_for(holdout_width, layers, vocab, seq_len)
    held_tokens = target_flops / compute.model_flops_per_token(held.param_count(), held)
    if min(p.steps for p in points) < MIN_STEPS:
        raise PlannerError(f"--ladder-flops: {ladder_flops:.3g} gives runs of under {MIN_STEPS} steps of {batch_tokens} "
                           "tokens; raise the budget or lower --batch-tokens")
    points.append(_point(held, held_tokens, batch_tokens, lr_ref, held_out=True))
    if points[-1].steps < MIN_STEPS:
        raise PlannerError(f"--target-flops: {target_flops:.3g} gives the held-out run under {MIN_STEPS} steps of "
                           f"{batch_tokens} tokens; raise it or lower --batch-tokens")
    return Ladder(tuple(points), seq_len, vocab, batch_tokens, ladder_flops, target_flops)


def layout(ladder: Ladder, micro_batch: int, engine: str = "single", world: int = 1) -> ParallelPlan:
    """How one point trains: `world` ranks of `engine` (single | ddp | deepspeed (ZeRO-2) | fsdp (full)),
    `micro_batch` sequences per rank, and the ladder's batch in tokens as the global batch."""
    if engine not in ENGINES:
        raise PlannerError(f"--holdout-engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if (engine == "single") != (world == 1):
        raise PlannerError(f"--holdout-gpus: {world} with engine {engine}: one rank is 'single', several need ddp, "
                           "deepspeed or fsdp")
    micro_batch = min(micro_batch, max(1, ladder.batch_tokens // ladder.seq_len // world))  # ranks share the batch
    plan = ParallelPlan.from_flags(world, zero=2 if engine == "deepspeed" else None,
                                   fsdp="full" if engine == "fsdp" else None, micro_batch=micro_batch)
    return plan.with_global_batch(ladder.batch_tokens // ladder.seq_len, cli_flag)


#: The MLflow run every point's run is nested under (the held-out run too), as teams group a sweep
PARENT_RUN = "ladder"


def run_config(point: LadderPoint, ladder: Ladder, plan: ParallelPlan, *, train: str, eval_data: str, out_dir: str,
               tracking_uri: str, experiment: str, eval_batches: int = 16) -> RunConfig:
    """The run config of one point, fp32; its eval loss averages `eval_batches` micro-batches of the eval shards."""
    return RunConfig(
        name=point.name, out_dir=out_dir,
        model=ModelConfig(layers=point.layers, hidden=point.hidden, heads=point.heads, vocab=ladder.vocab,
                          seq_len=ladder.seq_len, init_std=init_std_for(point.hidden)),
        data=DataConfig(train=train, eval=eval_data),
        optim=OptimConfig(lr=point.lr, warmup_steps=point.warmup_steps),
        train=TrainConfig(steps=point.steps, precision="fp32", eval_every=point.steps, eval_batches=eval_batches,
                          checkpoint_every=point.steps, log_every=max(1, point.steps // 20)),
        parallel=plan,
        tracking=TrackingConfig(tracking_uri=tracking_uri, experiment=experiment, run_name=point.name,
                                parent_run=PARENT_RUN, system_metrics_every_s=1.0),  # CPU runs of seconds
        plan={"ladder_point": asdict(point)},
    )


def relative_error(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


# ---- the workflow: write, predict the held-out run, report ---------------------------------------
LADDER_FILE, PREDICTION_FILE, REPORT_FILE = "ladder.json", "prediction.json", "report.json"


def write(ladder: Ladder, out: str, *, train: str, eval_data: str, micro_batch: int, experiment: str,
          bootstrap: int, python: str, holdout_engine: str = "single", holdout_gpus: int = 1,
          eval_batches: int = 16) -> dict:
    """One folder per point, `ladder.json`, and `run_ladder.sh` (the one launch for all of them).

    Ladder points train on one process; the held-out run may train as the real job would, on
    `holdout_gpus` ranks of `holdout_engine` through `launch local` (same global batch, same math).
    """

    single, held_plan = layout(ladder, micro_batch), layout(ladder, micro_batch, holdout_engine, holdout_gpus)
    for flag, folder in (("--data", train), ("--eval-data", eval_data)):
        check_shards(flag, Path(folder), ladder)
    root = Path(out).resolve()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    q = shlex.quote
    lines = ["#!/usr/bin/env bash", "# Emitted by `planner ladder`: the ladder, the prediction, the held-out run, the report.",
             "set -euo pipefail", f"cd {q(str(root))}", "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"]
    for p in ladder.points:
        folder = root / "points" / p.name
        plan = held_plan if p.held_out else single
        cfg = run_config(p, ladder, plan, train=str(Path(train).resolve()),
                         eval_data=str(Path(eval_data).resolve()), out_dir=str(folder / "run"), tracking_uri=uri,
                         experiment=experiment, eval_batches=eval_batches)
        atomic_write_text(folder / "run.yaml", dump_config(cfg))
        if p.held_out:
            lines.append(f"{q(python)} -m planner.cli ladder predict {q(str(root))} --bootstrap {bootstrap}")
        lines.append(f"[ -f {q(str(folder / 'run/summary.json'))} ] || {train_command(python, folder, plan)}")
    lines.append(f"{q(python)} -m planner.cli ladder report {q(str(root))}")
    atomic_write_text(root / "run_ladder.sh", "\n".join(lines) + "\n").chmod(0o755)
    meta = {**ladder.to_dict(), "train": str(Path(train).resolve()), "eval": str(Path(eval_data).resolve()),
            "tracking_uri": uri, "experiment": experiment}
    atomic_write_json(root / LADDER_FILE, meta)
    return meta


def train_command(python: str, folder: Path, plan: ParallelPlan) -> str:
    """One process: the trainer itself; several: `launch local` (torchrun or the deepspeed launcher)."""
    q = shlex.quote
    if plan.world == 1:
        return render(python_command(python, str(folder / "run.yaml")))
    return f"(cd {q(str(folder))} && {q(python)} -m launch.cli local run.yaml --nproc {plan.world})"


#: ladder.json and prediction.json are kilobytes (one entry per point); anything this large is not ours.
MAX_LADDER_BYTES = 16 << 20


def _read_json(path: Path):
    """A ladder file's JSON, read through `read_input` (no FIFO or device, size-capped)."""
    return read_json(path, MAX_LADDER_BYTES)


def _mapping(data, where: str, keys: tuple[str, ...]) -> dict:
    if not isinstance(data, dict):
        raise PlannerError(f"{where}: holds a {type(data).__name__}, not a mapping of keys to values")
    missing = [k for k in keys if k not in data]
    if missing:
        raise PlannerError(f"{where}: missing key(s) {', '.join(missing)}")
    return data


def _flag(where: str, value) -> bool:
    if not isinstance(value, bool):
        raise PlannerError(f"{where}: {value!r} must be true or false")
    return value


def _text(where: str, value) -> str:
    if not isinstance(value, str):
        raise PlannerError(f"{where}: {value!r} must be a string")
    return checks.no_control(where, value)


def parse_point(data, where: str) -> LadderPoint:
    """One point of ladder.json, typed: a run name, whole positive sizes and steps, finite positive lr/FLOPs."""
    fields = ("name", "layers", "hidden", "heads", "params", "tokens", "steps", "lr", "warmup_steps", "flops")
    d = _mapping(data, where, fields)
    return LadderPoint(
        name=checks.name(f"{where}.name", d["name"]),
        layers=checks.integer(f"{where}.layers", d["layers"], 1, 1000),
        hidden=checks.integer(f"{where}.hidden", d["hidden"], 4, 1 << 16),
        heads=checks.integer(f"{where}.heads", d["heads"], 1, 1 << 16),
        params=checks.integer(f"{where}.params", d["params"], 1, 10**15),
        tokens=checks.integer(f"{where}.tokens", d["tokens"], 1, 10**16),
        steps=checks.integer(f"{where}.steps", d["steps"], 1, 10**9),
        lr=checks.number(f"{where}.lr", d["lr"], 0.0, 1.0, lo_open=True),
        warmup_steps=checks.integer(f"{where}.warmup_steps", d["warmup_steps"], 0, 10**9),
        flops=checks.number(f"{where}.flops", d["flops"], 0.0, compute.FLOPS_RANGE[1], lo_open=True),
        held_out=_flag(f"{where}.held_out", d.get("held_out", False)),
        multiple=checks.number(f"{where}.multiple", d.get("multiple", 0.0), 0.0, MAX_MULTIPLE))


def load_ladder(root) -> dict:
    """`root`/ladder.json, typed: every point (`parse_point`), names unique, exactly one held-out point, the
    shapes and budgets in range, paths and the MLflow store as plain text. Returns it with the points as
    written by `write` (plain dicts), so a hand-edited or damaged file fails here, naming the key."""
    path = Path(root) / LADDER_FILE
    if not path.exists():
        raise PlannerError(f"LADDER_DIR: {root} has no {LADDER_FILE} (write one with `planner ladder design`)")
    where = str(path)
    meta = _mapping(_read_json(path), where, ("points", "seq_len", "vocab", "batch_tokens", "ladder_flops",
                                               "target_flops", "train", "eval", "tracking_uri", "experiment"))
    if not isinstance(meta["points"], list) or not meta["points"]:
        raise PlannerError(f"{where}: points must be a non-empty list")
    points = [parse_point(p, f"{where}: points[{i}]") for i, p in enumerate(meta["points"])]
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise PlannerError(f"{where}: points: a name appears twice ({sorted(n for n in names if names.count(n) > 1)[0]})")
    if sum(p.held_out for p in points) != 1:
        raise PlannerError(f"{where}: points: {sum(p.held_out for p in points)} held-out points; a ladder has exactly one")
    checks.integer(f"{where}: seq_len", meta["seq_len"], 2, 1 << 20)
    checks.integer(f"{where}: vocab", meta["vocab"], 2, 1 << 24)
    checks.integer(f"{where}: batch_tokens", meta["batch_tokens"], 1, MAX_BATCH_TOKENS)
    for key in ("ladder_flops", "target_flops"):
        checks.number(f"{where}: {key}", meta[key], 1.0, compute.FLOPS_RANGE[1])
    for key in ("train", "eval", "tracking_uri"):
        _text(f"{where}: {key}", meta[key])
    _text(f"{where}: experiment", meta["experiment"])
    return {**meta, "points": [asdict(p) for p in points]}


def load_prediction(root, meta: dict) -> dict:
    """`root`/prediction.json, typed: the law's five coefficients finite (and in range when the fit converged,
    `scaling.parse_law`), converged a flag, the held-out run the ladder's own, the prediction finite and > 0,
    the band two numbers (NaN without a bootstrap)."""
    from planner.laws.scaling import parse_law

    path = Path(root) / PREDICTION_FILE
    if not path.exists():
        raise PlannerError(f"LADDER_DIR: no {PREDICTION_FILE}; run `planner ladder predict` before the held-out run")
    where = str(path)
    pred = _mapping(_read_json(path), where, ("law", "converged", "held_out", "loss_predicted", "band"))
    law = _mapping(pred["law"], f"{where}: law", ("E", "A", "B", "alpha", "beta"))
    for key in ("E", "A", "B", "alpha", "beta"):
        v = law[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise PlannerError(f"{where}: law.{key} {v!r} must be a finite number")
    converged = _flag(f"{where}: converged", pred["converged"])
    if converged:  # a law that may be planned with: in range (a non-converged one is only reported, refused)
        parse_law(law, f"{where}: law", need_kind=False, flag="")
    message = pred.get("message", "")
    if not isinstance(message, str):
        raise PlannerError(f"{where}: message {message!r} must be a string")
    pred["message"] = " ".join(message.split())[:500]  # shown on one line
    held = next(p["name"] for p in meta["points"] if p["held_out"])
    if pred["held_out"] != held:
        raise PlannerError(f"{where}: held_out {str(pred['held_out'])[:80]!r} is not the ladder's held-out run {held}")
    predicted = pred["loss_predicted"]
    if converged:
        checks.number(f"{where}: loss_predicted", predicted, 0.0, 1e3, lo_open=True)
    elif isinstance(predicted, bool) or not isinstance(predicted, (int, float)):
        raise PlannerError(f"{where}: loss_predicted {predicted!r} must be a number")
    band = pred["band"]
    if not (isinstance(band, list) and len(band) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in band)):
        raise PlannerError(f"{where}: band {str(band)[:80]} must be [low, high]")
    ranges = pred.setdefault("replan_band", {})
    if not (isinstance(ranges, dict) and all(
            key in ("params", "tokens", "loss") and isinstance(v, list) and len(v) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            for key, v in ranges.items())):
        raise PlannerError(f"{where}: replan_band {str(ranges)[:80]} must map params, tokens and loss to [low, high]")
    return pred


def describe_replan(plan: dict) -> str:
    """The re-plan (`report`'s "replan": an `OptimalPlan` dict and its "band") on one line, each figure with its
    95% bootstrap range when there is one."""
    band = plan.get("band", {})

    def figure(key: str, fmt: str) -> str:
        lo_hi = band.get(key)
        return f"{plan[key]:{fmt}}" + (f" (95%: {lo_hi[0]:{fmt}}-{lo_hi[1]:{fmt}})" if lo_hi else "")

    return (f"re-plan at {plan['flops']:.3g} FLOPs from this law: N* {figure('params', '.4g')}, D* {figure('tokens', '.4g')}, "
            f"predicted loss {figure('loss', '.4f')}")


def _load(root) -> dict:
    return load_ladder(root)


def _inside(root: Path, path: Path, what: str) -> Path:
    """A file the ladder writes: it must resolve inside the ladder folder (a link may not lead it out)."""
    try:
        real, home = path.resolve(), root.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13, ELOOP after)
        raise PlannerError(f"{what}: {path} cannot be resolved ({exc}); a link there loops or is broken") from None
    if not real.is_relative_to(home):
        raise PlannerError(f"{what}: {path} resolves to {real}, outside the ladder folder {home}")
    return path


def finished_runs(meta: dict) -> dict[str, dict]:
    """Point name -> {n_params, train_tokens, eval_loss} of every finished run in the ladder's MLflow store."""
    from planner.laws.rundata import load_table

    table = load_table(f"mlflow:{meta['experiment']}", meta["tracking_uri"])
    need = ("tags.mlflow.runName", "params.n_params", "params.train_tokens", "metrics.eval_loss")
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise PlannerError(f"LADDER_DIR: the MLflow runs lack {', '.join(missing)} (no run has finished yet?)")
    table = table[table["status"] == "FINISHED"].dropna(subset=list(need))
    runs = {}
    for _, row in table.iterrows():
        name = row["tags.mlflow.runName"]
        where = f"LADDER_DIR: MLflow run {name!r}"
        runs[name] = {"n_params": _logged(where, "params.n_params", row, 1.0, 1e15),
                      "train_tokens": _logged(where, "params.train_tokens", row, 1.0, 1e16),
                      "eval_loss": _logged(where, "metrics.eval_loss", row, 0.0, 1e3)}
    return runs


def _logged(where: str, column: str, row, lo: float, hi: float) -> float:
    """A value a run logged, as a number in (lo, hi]: the store is a file anyone may have written to."""
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise PlannerError(f"{where}: {column} {row[column]!r} is not a number") from None
    return checks.number(f"{where}: {column}", value, lo, hi, lo_open=True)


def predict(root, bootstrap: int = 30) -> dict:
    """Fit the finished ladder runs and write the held-out run's prediction into its run.yaml."""
    import numpy as np

    from planner.laws.fit import fit_nd, predict_nd

    meta, root = _load(root), Path(root)
    runs = finished_runs(meta)
    ladder_points = [p for p in meta["points"] if not p["held_out"]]
    held = next(p for p in meta["points"] if p["held_out"])
    config = _inside(root, root / "points" / held["name"] / "run.yaml", "LADDER_DIR")  # before any work
    have = [runs[p["name"]] for p in ladder_points if p["name"] in runs]
    if len(have) < len(ladder_points):
        raise PlannerError(f"LADDER_DIR: {len(have)} of {len(ladder_points)} ladder runs have finished; train them first")
    n, d, loss = (np.array([r[k] for r in have]) for k in ("n_params", "train_tokens", "eval_loss"))
    fit = fit_nd(n, d, loss, bootstrap=bootstrap)
    predicted = float(predict_nd(fit.params, held["params"], held["tokens"]))
    laws = fit.extra.get("bootstrap_params", [])
    samples = [float(predict_nd(s, held["params"], held["tokens"])) for s in laws]
    low, high = (np.percentile(samples, [2.5, 97.5]).tolist() if samples else [math.nan, math.nan])
    result = {"law": fit.params, "stderr": fit.stderr, "converged": fit.converged, "message": fit.message,
              "held_out": held["name"], "loss_predicted": predicted, "band": [low, high], "bootstrap": bootstrap,
              "fitted_on": len(have), "replan_band": replan_band(laws, meta["target_flops"])}
    cfg = load_config(config)
    cfg.plan.update({"loss_predicted": predicted, "loss_predicted_low": low, "loss_predicted_high": high})
    atomic_write_text(config, dump_config(cfg))
    atomic_write_json(root / PREDICTION_FILE, result)
    return result


def replan_band(laws: list[dict], flops: float) -> dict[str, list[float]]:
    """The 95% range of the re-plan's N*, D* and loss over the bootstrap's laws ({} without a bootstrap)."""
    import numpy as np

    from planner.laws.scaling import ParametricLaw, plan_optimal

    plans = [plan_optimal(ParametricLaw(**law, name="bootstrap"), flops) for law in laws]
    return {key: np.percentile([getattr(p, key) for p in plans], [2.5, 97.5]).tolist()
            for key in ("params", "tokens", "loss")} if plans else {}


def report(root) -> dict:
    """Held-out error, E against the source's true entropy rate (when the data knows it), and the re-plan
    or the refusal, as JSON and Markdown."""

    meta, root = _load(root), Path(root)
    pred = load_prediction(root, meta)
    runs = finished_runs(meta)
    measured = runs.get(pred["held_out"])
    if measured is None:
        raise PlannerError(f"LADDER_DIR: the held-out run {pred['held_out']} has not finished")
    out = {**pred, "loss_measured": measured["eval_loss"],
           "error": relative_error(pred["loss_predicted"], measured["eval_loss"])}
    truth = _entropy_rate(Path(meta["train"]) / "manifest.json")
    if truth:
        out["true_entropy_rate"], out["E_error"] = truth, relative_error(pred["law"]["E"], truth)
    out["monotone"] = monotone(meta["points"], runs, pred["law"])
    low, high = pred["band"]
    out["usable"], out["refusal"] = usable(pred["converged"], pred["message"], low, high, out["error"],
                                           measured["eval_loss"])
    if out["usable"]:
        from planner.laws.scaling import ParametricLaw, plan_optimal

        law = ParametricLaw(**{k: pred["law"][k] for k in ("E", "A", "B", "alpha", "beta")}, name="ladder")
        out["replan"] = {**plan_optimal(law, meta["target_flops"]).to_dict(), "band": pred["replan_band"]}
    atomic_write_json(root / REPORT_FILE, out)
    return out


def check_shards(flag: str, folder: Path, ladder: Ladder) -> None:
    """The shard folder every point will train (or evaluate) on, read now rather than by each run: it exists,
    its rows are the ladder's sequence length and its token ids fit the ladder's vocabulary (the trainer's own
    checks, `pretrain.data.shards`, which would otherwise fail every run after the design was written)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise PlannerError(f"{flag}: {folder} is not a shard folder (no manifest.json); pack it first")
    data = _mapping(_read_json(manifest), str(manifest), ("seq_len", "vocab_size"))
    if data["seq_len"] != ladder.seq_len:
        raise PlannerError(f"{flag}: {folder} holds rows of {data['seq_len']} tokens, the ladder trains on "
                           f"--seq-len {ladder.seq_len}")
    if not isinstance(data["vocab_size"], int) or data["vocab_size"] > ladder.vocab:
        raise PlannerError(f"{flag}: {folder} was tokenized with a vocabulary of {data['vocab_size']}, more than "
                           f"the ladder's --vocab {ladder.vocab}")


def _entropy_rate(manifest: Path) -> float | None:
    """The training shards' true entropy rate (nats per token) when their manifest records one (synthetic
    sources); None otherwise. Read through `read_input`; a recorded value must be finite and > 0."""
    if not manifest.exists():
        return None
    data = _read_json(manifest)
    rate = data.get("entropy_rate_nats") if isinstance(data, dict) else None
    if rate is None:
        return None
    return checks.number(f"{manifest}: entropy_rate_nats", rate, 0.0, 1e3, lo_open=True)


def monotone(points: list[dict], runs: dict[str, dict], law: dict) -> dict:
    """Per token multiple, does the measured order of the sizes match the order the fitted law predicts?

    `ok` is true when it does at every multiple; `orders` gives, per multiple, the point names in measured
    and predicted order (best first). A ladder whose larger models lose at a fixed budget cannot be fitted
    by L(N, D): its lr or its data (repetition) is wrong for the larger sizes.
    """
    from planner.laws.fit import predict_nd

    orders, ok = {}, True
    for m in sorted({p["multiple"] for p in points if not p["held_out"]}):
        group = [p for p in points if not p["held_out"] and p["multiple"] == m and p["name"] in runs]
        measured = [p["name"] for p in sorted(group, key=lambda p: runs[p["name"]]["eval_loss"])]
        predicted = [p["name"] for p in sorted(group, key=lambda p: float(predict_nd(law, p["params"], p["tokens"])))]
        orders[f"{m:g}"] = {"measured": measured, "predicted": predicted}
        ok = ok and measured == predicted
    return {"ok": ok, "orders": orders}


def describe_monotone(mono: dict) -> str:
    """One line: is the ladder monotone, and each multiple's sizes in measured order (best first)."""
    orders = "; ".join(f"x{m}: " + " < ".join(o["measured"]) for m, o in mono["orders"].items())
    return f"monotone in size at every token multiple: {'yes' if mono['ok'] else 'NO'} ({orders}, by eval loss)"


def usable(converged: bool, message: str, low: float, high: float, error: float, measured: float) -> tuple[bool, str]:
    """Whether the law may re-plan: converged, it predicted the held-out run within MAX_HELD_OUT_ERROR, and the
    measured loss lies in the prediction's bootstrap band (the band is honest about the law's uncertainty)."""
    if not converged:
        return False, (f"the fit did not converge ({message}); more distinct sizes, more tokens per size and less "
                       "data repetition would help")
    if not (math.isfinite(low) and math.isfinite(high)):
        return False, "the held-out prediction has no bootstrap band (--bootstrap 0); its uncertainty is unknown"
    if not abs(error) <= MAX_HELD_OUT_ERROR:
        return False, (f"the law missed the held-out run by {error:+.2%}, more than +/-{MAX_HELD_OUT_ERROR:.0%}; more "
                       "runs (sizes x tokens), closer to the held-out size, would help")
    if not low <= measured <= high:
        return False, (f"the held-out run's loss {measured:.4g} lies outside the prediction's 95% bootstrap band "
                       f"({low:.4g}-{high:.4g}): the band understates the law's uncertainty")
    return True, ""
