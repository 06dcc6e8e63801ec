"""Property-based: whatever flags or config documents a user writes, every entry point answers with exit 0,
or one line on stderr and exit 2; never a traceback, and nothing written on error (hypothesis)."""

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cli import main as planner_main
from planner.core.schema import dump_config, load_config

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

#: Values a careless or hostile user types: numbers of every size and sign, NaN, words, shell, paths.
WILD = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e300", "1e-300", "7B", "1.4T", "0", "-1", "", "abc", "$(touch x)",
                     "../../x", "a;b", "8\n9", "1e12", "a100-80gb", "h100-sxm", "full", "hybrid", "2", "3"]),
    st.text(max_size=8),
)
ESTIMATE_FLAGS = ["--params", "--layers", "--hidden", "--heads", "--kv-heads", "--ffn", "--vocab", "--seq-len",
                  "--gpus", "--gpus-per-node", "--zero", "--fsdp", "--sharding-factor", "--offload", "--tp",
                  "--micro-batch", "--checkpointing", "--tokens", "--mfu", "--price", "--runtime-gib",
                  "--fragmentation", "--finetune", "--lora-rank", "--precision", "--optimizer", "--convention", "--gpu"]
OPTIMAL_FLAGS = ["--flops", "--pf-days", "--gpu-hours", "--days", "--dollars", "--params", "--max-tokens",
                 "--max-epochs", "--tokens-per-param", "--seq-len", "--gpus", "--mfu", "--price", "--law", "--gpu"]


def run(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = planner_main(argv)
    return code, err.getvalue()


def assert_answered(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("planner: error: "), err


def flags(names: list[str], base: list[str]):
    pairs = st.lists(st.tuples(st.sampled_from(names), WILD), max_size=4)
    return pairs.map(lambda ps: base + [x for flag, value in ps for x in (flag, value)])


@SETTINGS
@given(flags(ESTIMATE_FLAGS, ["estimate", "--params", "7e9"]))
def test_estimate_answers_any_flags_in_one_line(argv):
    assert_answered(*run(argv))


@SETTINGS
@given(flags(OPTIMAL_FLAGS, ["optimal"]))
def test_optimal_answers_any_flags_in_one_line(argv):
    assert_answered(*run(argv))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(flags([*ESTIMATE_FLAGS, "--batch-tokens", "--name", "--lr", "--nodes", "--time", "--max-time", "--partition",
              "--data"], ["emit", "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "256",
                          "--seq-len", "64"]))
def test_emit_answers_any_flags_and_writes_nothing_on_error(argv):
    root = Path(tempfile.mkdtemp())
    try:
        code, err = run([*argv, "--out", str(root / "job")])
        assert_answered(code, err)
        if code == 2:
            assert not (root / "job").exists() and list(root.iterdir()) == []
    finally:
        shutil.rmtree(root)


def emitted_config() -> dict:
    root = Path(tempfile.mkdtemp())
    try:
        assert run(["emit", "--out", str(root), "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "256",
                    "--seq-len", "64", "--gpus", "2", "--fsdp", "full", "--batch-tokens", "256"])[0] == 0
        return yaml.safe_load((root / "run.yaml").read_text())
    finally:
        shutil.rmtree(root)


BASE = emitted_config()


def key_paths(doc: dict, prefix=()):
    for key, value in doc.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from key_paths(value, (*prefix, key))


PATHS = sorted(key_paths(BASE))
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**18, 10**18), st.floats(allow_nan=True),
                   st.text(max_size=10), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def mutated(doc: dict, path: tuple, value) -> dict:
    import copy

    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):  # a parent replaced by a scalar earlier: nothing left to change here
        node[path[-1]] = value
    return doc


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3))
def test_a_run_config_with_any_values_is_estimated_or_refused_in_one_line(changes):
    doc = BASE
    for path, value in changes:
        doc = mutated(doc, path, value)
    root = Path(tempfile.mkdtemp())
    try:
        (root / "run.yaml").write_text(yaml.safe_dump(doc))
        assert_answered(*run(["estimate", "--config", str(root / "run.yaml")]))
    finally:
        shutil.rmtree(root)


def test_the_emitted_config_round_trips_unchanged(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(BASE))
    assert yaml.safe_load(dump_config(load_config(tmp_path / "run.yaml"))) == BASE


# ---- launch: any run config the launcher is handed --------------------------------------------------------
def launch_run(argv: list[str]) -> tuple[int, str]:
    from launch.cli import main as launch_main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = launch_main(argv)
    return code, err.getvalue()


SHARDS = Path(tempfile.mkdtemp()) / "train"


def _shards() -> Path:
    from pretrain.data.synthetic import write_markov_shards

    if not (SHARDS / "manifest.json").is_file():
        write_markov_shards(SHARDS, rows=64)
    return SHARDS


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3),
       st.sampled_from(["1", "2", "3", "8"]))
def test_launch_answers_any_run_config_in_one_line_and_starts_nothing_on_error(changes, nproc):
    doc = mutated(BASE, ("data", "train"), str(_shards()))
    for path, value in changes:
        doc = mutated(doc, path, value)
    root = Path(tempfile.mkdtemp())
    try:
        (root / "run.yaml").write_text(yaml.safe_dump(doc))
        code, err = launch_run(["local", str(root / "run.yaml"), "--nproc", nproc, "--dry-run"])
        assert code in (0, 2), (code, err)
        assert "Traceback" not in err
        if code == 2:
            assert len([line for line in err.splitlines() if line.strip()]) == 1, err
        assert sorted(p.name for p in root.iterdir()) == ["run.yaml"]  # a dry run writes nothing
    finally:
        shutil.rmtree(root)


# ---- the data pipeline's config: any document -------------------------------------------------------------
SAMPLE = yaml.safe_load((Path(__file__).parents[1] / "configs/data-sample.yaml").read_text())
DATA_PATHS = sorted(key_paths(SAMPLE))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(DATA_PATHS), VALUES), min_size=1, max_size=3))
def test_a_data_pipeline_config_with_any_values_loads_or_is_refused_in_one_line(changes):
    from planner.core.errors import guarded
    from pretrain.data.config import load_pipeline_config

    doc = SAMPLE
    for path, value in changes:
        doc = mutated(doc, path, value)
    root = Path(tempfile.mkdtemp())
    try:
        (root / "data.yaml").write_text(yaml.safe_dump(doc))
        err = io.StringIO()
        def load() -> int:
            load_pipeline_config(str(root / "data.yaml"))
            return 0

        with contextlib.redirect_stderr(err):
            code = guarded("pretrain-data", load)
        assert code in (0, 2) and "Traceback" not in err.getvalue()
        if code == 2:
            assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    finally:
        shutil.rmtree(root)


# ---- planner ladder design: any flags ----------------------------------------------------------------------
LADDER_FLAGS = ["--widths", "--holdout-width", "--layers", "--vocab", "--seq-len", "--batch-tokens", "--micro-batch",
                "--multiples", "--lr-ref", "--ladder-flops", "--target-flops", "--bootstrap", "--holdout-engine",
                "--holdout-gpus"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(flags(LADDER_FLAGS, []))
def test_ladder_design_answers_any_flags_and_writes_nothing_on_error(extra):
    root = Path(tempfile.mkdtemp())
    try:
        for split in ("train", "eval"):  # what design reads of a packed split
            (root / split).mkdir()
            (root / split / "manifest.json").write_text(json.dumps({"seq_len": 64, "vocab_size": 256}))
        argv = ["ladder", "design", "--out", str(root / "ladder"), "--data", str(root / "train"),
                "--eval-data", str(root / "eval"),
                "--vocab", "256", "--seq-len", "64", "--ladder-flops", "1e12", "--target-flops", "4e12", *extra]
        code, err = run(argv)
        assert_answered(code, err)
        if code == 2:
            assert not (root / "ladder").exists()
    finally:
        shutil.rmtree(root)
