"""Issue 22, the trainer and laws side: a typed edge for every file we read, nothing written outside its folder.

Each file the trainer or the planner reads back (a checkpoint's meta.json, `latest`, a loader position, a shard
manifest, a law file, ladder.json and prediction.json, run.yaml, `planner fit` data) is damaged or crafted the
way a bad disk, a hand edit or an attacker would, and every case must end with exit status 2, one line on
stderr naming the file and the key, no traceback, and nothing created, changed or removed anywhere under the
test's folder (the checkpoints a retrain from scratch would overwrite included). The entry points run
in-process (`main(argv)`, what the console scripts call); training is a 6-step CPU run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from planner.cli import main as planner_main
from pretrain.data.shards import MANIFEST, ShardWriter, TokenShards
from pretrain.data.synthetic import write_markov_shards
from pretrain.train import main as train_main

TRAIN = ["tracking.enabled=false", "train.checkpoint_every=3", "train.eval_every=100", "train.precision=fp32",
         "parallel.micro_batch=4", "optim.warmup_steps=1"]


def tree(root: Path) -> dict[str, str]:
    """Every entry under `root`: a file's hash, a link's target, a folder or a FIFO as such (never read)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_fifo():
                out[rel] = "fifo"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, main, argv: list[str], root: Path, *expected: str) -> str:
    """`main(argv)` exits 2 with one line naming `expected`, no traceback, and changes nothing under `root`."""
    before = tree(root)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert tree(root) == before
    return lines[0]


# ---- the trainer: one finished 6-step run with checkpoints at steps 3 and 6 -----------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    write_markov_shards(root / "data", rows=128, rows_per_shard=64)
    assert train_main([f"data.train={root / 'data'}", f"out_dir={root / 'run'}", "train.steps=6", *TRAIN]) == 0
    return root


@pytest.fixture
def run(finished, tmp_path, monkeypatch) -> Path:
    """A copy of the finished run in this test's folder (the working folder); resumed with train.steps=9, a retrain
    from scratch would overwrite step_3 and step_6."""
    shutil.copytree(finished / "run", tmp_path / "run", symlinks=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run"


def resume_argv(run: Path, data: Path) -> list[str]:
    return [f"data.train={data}", f"out_dir={run}", "train.steps=9", *TRAIN]


def ckpt(run: Path, step: int = 6) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def edit_meta(run: Path, **changes) -> Path:
    path = ckpt(run) / "meta.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            meta.pop(key)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))  # allow_nan: NaN and Infinity are written as JSON's extensions
    return path


DELETE = object()

META_CASES = {
    "negative step": ({"step": -5}, "step"),
    "step past train.steps": ({"step": 10**9}, "step"),
    "step as text": ({"step": "6"}, "step"),
    "fractional step": ({"step": 6.5}, "step"),
    "boolean step": ({"step": True}, "step"),
    "negative tokens": ({"tokens_seen": -1}, "tokens_seen"),
    "skipped past step": ({"skipped_total": 99}, "skipped_total"),
    "injected run id": ({"mlflow_run_id": "abc; rm -rf ~"}, "mlflow_run_id"),
    "run id with newline": ({"mlflow_run_id": "abc\nEVIL"}, "mlflow_run_id"),
    "nan loss": ({"history": [[1, float("nan")]]}, "history[0] loss"),
    "infinite loss": ({"history": [[1, float("inf")]]}, "history[0] loss"),
    "steps out of order": ({"history": [[3, 1.0], [2, 1.0]]}, "history[1] step"),
    "history past the step": ({"history": [[7, 1.0]]}, "history[0] step"),
    "history not a list": ({"history": "abc"}, "history"),
    "history of triples": ({"history": [[1, 2.0, 3]]}, "history[0]"),
    "eval past the step": ({"evals": [[7, 1.0]]}, "evals[0] step"),
    "zero world": ({"world": 0}, "world"),
    "missing step": ({"step": DELETE}, "missing key"),
    "missing history": ({"history": DELETE}, "missing key(s) history"),
}


@pytest.mark.parametrize("change, key", META_CASES.values(), ids=META_CASES.keys())
def test_a_bad_checkpoint_meta_is_refused_naming_the_file_and_key(capsys, finished, run, change, key):
    meta = edit_meta(run, **change)
    refused(capsys, train_main, resume_argv(run, finished / "data"), run.parent, f"{meta}: {key}")


@pytest.mark.parametrize("text, says", [("[1, 2]", "holds a list"), ("{not json", "not valid JSON"),
                                        ("\xff\xfe", "not valid JSON")])
def test_a_meta_json_that_is_not_a_mapping_is_refused(capsys, finished, run, text, says):
    meta = ckpt(run) / "meta.json"
    meta.write_bytes(text.encode("latin-1"))
    refused(capsys, train_main, resume_argv(run, finished / "data"), run.parent, str(meta), says)


def test_a_negative_loader_position_is_refused_naming_the_rank_file(capsys, finished, run):
    import torch

    rank = ckpt(run) / "rank_00000.pt"
    state = torch.load(rank, weights_only=True)
    state["loader"]["position"] = -1
    torch.save(state, rank)
    refused(capsys, train_main, resume_argv(run, finished / "data"), run.parent, f"{rank}: loader.position")


def test_a_good_checkpoint_still_resumes(finished, run):
    assert train_main(resume_argv(run, finished / "data")) == 0
    assert (run / "checkpoints/latest").read_text().strip() == "step_00000009"
    assert json.loads((run / "summary.json").read_text())["steps"] == 9


# ---- pointers stay home ----------------------------------------------------------------------------------------
def outside_copy(run: Path) -> Path:
    """A complete checkpoint outside the checkpoint folder, where a crafted pointer would lead."""
    target = run.parent / "outside" / "step_x"
    shutil.copytree(ckpt(run), target)
    return target


def _relative(run):
    outside_copy(run)
    (run / "checkpoints/latest").write_text("../../outside/step_x\n")
    return "not the name of a step_* folder"


def _absolute(run):
    (run / "checkpoints/latest").write_text(f"{outside_copy(run)}\n")
    return "not the name of a step_* folder"


def _loop(run):
    latest = run / "checkpoints/latest"
    latest.unlink()
    latest.symlink_to("latest")
    return "symlink loop"


def _two_link_loop(run):
    latest = run / "checkpoints/latest"
    latest.unlink()
    latest.symlink_to("other")
    (run / "checkpoints/other").symlink_to("latest")
    return "symlink loop"


def _dangling(run):
    latest = run / "checkpoints/latest"
    latest.unlink()
    latest.symlink_to("nowhere")
    return "does not exist"


def _latest_links_out(run):
    outside_copy(run)
    away = run.parent / "outside" / "latest"
    away.write_text("step_00000006\n")
    latest = run / "checkpoints/latest"
    latest.unlink()
    latest.symlink_to(away)
    return "outside the checkpoint folder"


def _step_links_out(run):
    target = outside_copy(run)
    shutil.rmtree(ckpt(run))
    ckpt(run).symlink_to(target)
    return "outside the checkpoint folder"


def _step_is_a_loop(run):
    shutil.rmtree(ckpt(run))
    ckpt(run).symlink_to(ckpt(run).name)
    return "symlink loop"


def _file_links_out(run):
    target = outside_copy(run)
    (ckpt(run) / "model_optim.pt").unlink()
    (ckpt(run) / "model_optim.pt").symlink_to(target / "model_optim.pt")
    return "outside the checkpoint folder"


def _fifo(run):
    latest = run / "checkpoints/latest"
    latest.unlink()
    os.mkfifo(latest)
    return "FIFO"


def _missing_step(run):
    (run / "checkpoints/latest").write_text("step_00000099\n")
    return "does not exist"


def _incomplete(run):
    (ckpt(run) / "meta.json").unlink()
    return "missing or incomplete"


def _binary(run):
    (run / "checkpoints/latest").write_bytes(b"\xff\xfe\x00step")
    return "latest"


def _empty(run):
    (run / "checkpoints/latest").write_text("")
    return "not the name of a step_* folder"


def _dotdot(run):
    (run / "checkpoints/latest").write_text("..\n")
    return "not the name of a step_* folder"


POINTERS = {f.__name__.strip("_"): f for f in (_relative, _absolute, _loop, _two_link_loop, _dangling,
                                                _latest_links_out, _step_links_out, _step_is_a_loop,
                                                _file_links_out, _fifo, _missing_step, _incomplete, _binary, _empty, _dotdot)}


@pytest.mark.parametrize("craft", POINTERS.values(), ids=POINTERS.keys())
def test_a_pointer_that_leaves_the_checkpoint_folder_or_loops_is_refused_and_nothing_is_retrained(
        capsys, finished, run, craft):
    says = craft(run)
    step3, step6 = tree(ckpt(run, 3)), tree(ckpt(run)) if ckpt(run).is_dir() and not ckpt(run).is_symlink() else None
    line = refused(capsys, train_main, resume_argv(run, finished / "data"), run.parent, says)
    assert "checkpoint" in line or "latest" in line
    assert tree(ckpt(run, 3)) == step3 and (step6 is None or tree(ckpt(run)) == step6)
    assert not ckpt(run, 9).exists() and not (run / "summary.json").is_symlink()


def test_a_save_over_a_planted_step_link_replaces_the_link_not_what_it_points_at(finished, run):
    """A step_* link in the checkpoint folder, not named by `latest`: the save at that step drops the link and
    writes its checkpoint in the folder; the link's target (outside) is untouched."""
    target = outside_copy(run)
    before = tree(target)
    ckpt(run, 9).symlink_to(target)
    assert train_main(resume_argv(run, finished / "data")) == 0
    assert ckpt(run, 9).is_dir() and not ckpt(run, 9).is_symlink() and tree(target) == before


# ---- shard manifests -----------------------------------------------------------------------------------------
@pytest.fixture
def shards(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_markov_shards(tmp_path / "data", rows=128, rows_per_shard=64)
    return tmp_path / "data"


def edit_manifest(folder: Path, **changes) -> Path:
    path = folder / MANIFEST
    m = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            m.pop(key)
        else:
            m[key] = value
    path.write_text(json.dumps(m))
    return path


def train_argv(data: Path, *extra: str) -> list[str]:
    return [f"data.train={data}", "out_dir=run", "train.steps=2", *TRAIN, *extra]


MANIFEST_CASES = {
    "float64 dtype": ({"dtype": "float64"}, "dtype"),
    "int8 dtype": ({"dtype": "int8"}, "dtype"),
    "vocab past uint16": ({"vocab_size": 70_000}, "vocab_size"),
    "negative rows": ({"shards": [{"file": "shard_00000.bin", "rows": -1}]}, "shards[0].rows"),
    "rows as text": ({"shards": [{"file": "shard_00000.bin", "rows": "64"}]}, "shards[0].rows"),
    "a path as file": ({"shards": [{"file": "../../etc/passwd", "rows": 1}]}, "shards[0].file"),
    "an absolute file": ({"shards": [{"file": "/etc/passwd", "rows": 1}]}, "shards[0].file"),
    "a file twice": ({"shards": [{"file": "shard_00000.bin", "rows": 64}] * 2}, "listed twice"),
    "rows disagree": ({"rows": 1000}, "rows"),
    "tokens disagree": ({"tokens": 5}, "tokens"),
    "max id past vocab": ({"max_token_id": 256}, "max_token_id"),
    "eos past vocab": ({"eos_id": 999}, "eos_id"),
    "negative seq_len": ({"seq_len": -1}, "seq_len"),
    "bad tokenizer hash": ({"tokenizer_sha256": "$(touch pwned)"}, "tokenizer_sha256"),
    "no dtype": ({"dtype": DELETE}, "missing key"),
}


@pytest.mark.parametrize("change, key", MANIFEST_CASES.values(), ids=MANIFEST_CASES.keys())
def test_a_bad_shard_manifest_is_refused_naming_the_key(capsys, shards, change, key):
    manifest = edit_manifest(shards, **change)
    refused(capsys, train_main, train_argv(shards), shards.parent, str(manifest), key)


def test_a_vocabulary_larger_than_the_model_is_refused_before_training(capsys, shards):
    manifest = edit_manifest(shards, vocab_size=50_000)
    refused(capsys, train_main, train_argv(shards), shards.parent,
            f"data.train: {manifest}: vocab_size 50000 > model.vocab 256")


def test_eval_shards_with_a_larger_vocabulary_are_refused_too(capsys, shards, tmp_path):
    write_markov_shards(tmp_path / "eval", rows=64, rows_per_shard=64)
    manifest = edit_manifest(tmp_path / "eval", vocab_size=50_000)
    refused(capsys, train_main, train_argv(shards, f"data.eval={tmp_path / 'eval'}"), tmp_path,
            f"data.eval: {manifest}: vocab_size 50000 > model.vocab 256")


def _poison(folder: Path, token: int) -> None:
    for shard in sorted(folder.glob("shard_*.bin")):
        tokens = np.memmap(shard, dtype="<u2", mode="r+")
        tokens[:] = token
        tokens.flush()


def test_an_old_manifest_without_max_token_id_has_its_shards_scanned_at_open(capsys, shards):
    _poison(shards, 300)  # an id the 256-token model has no embedding for: an IndexError mid-training, before
    manifest = edit_manifest(shards, max_token_id=DELETE)
    refused(capsys, train_main, train_argv(shards), shards.parent, str(manifest), "token id 300", "vocab_size")


def test_a_shard_changed_after_its_manifest_stops_at_the_first_batch_in_one_line(capsys, shards):
    _poison(shards, 300)  # the manifest still records max_token_id 255
    line = refused(capsys, train_main, train_argv(shards), shards.parent, "token id 300", "vocab_size 256")
    assert str(shards) in line


def test_a_manifest_that_is_a_fifo_is_refused_unread(capsys, shards):
    (shards / MANIFEST).unlink()
    os.mkfifo(shards / MANIFEST)
    refused(capsys, train_main, train_argv(shards), shards.parent, str(shards / MANIFEST), "FIFO")


def test_shard_writer_records_the_largest_token_id_and_open_checks_it(tmp_path):
    w = ShardWriter(tmp_path, seq_len=7, vocab_size=100, eos_id=0, rows_per_shard=2)
    for doc in ([5, 6, 7], [8, 9], list(range(10, 30)), [97, 3, 4, 5, 6, 7, 8, 9, 1]):
        w.add(doc)
    m = w.close()
    shards = TokenShards.open(tmp_path)
    rows = np.stack([shards.row(i) for i in range(len(shards))])
    assert m["max_token_id"] == int(rows.max()) == shards.typed.max_token_id
    assert shards.typed.dtype == "uint16" and shards.typed.rows == m["rows"] == len(shards)


def test_an_old_manifest_gets_its_max_token_id_from_the_shards(tmp_path):
    write_markov_shards(tmp_path, rows=64, rows_per_shard=32)
    edit_manifest(tmp_path, max_token_id=DELETE)
    shards = TokenShards.open(tmp_path)
    assert shards.typed.max_token_id == max(int(shards.row(i).max()) for i in range(len(shards)))


# ---- law files -----------------------------------------------------------------------------------------------
GOOD_LAW = {"kind": "nd", "E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28, "converged": True,
            "name": "fit-nd:runs.csv"}

LAW_CASES = {
    "zero alpha": ({"alpha": 0.0}, "alpha 0.0 must be a finite number in (0, 5]"),
    "negative beta": ({"beta": -0.1}, "beta -0.1"),
    "large beta": ({"beta": 6.0}, "beta 6.0"),
    "nan alpha": ({"alpha": float("nan")}, "alpha nan"),
    "infinite A": ({"A": float("inf")}, "A inf"),
    "zero A": ({"A": 0}, "A 0"),
    "negative B": ({"B": -1.0}, "B -1.0"),
    "B as text": ({"B": "410"}, "B '410'"),
    "boolean E": ({"E": True}, "E True"),
    "negative E": ({"E": -1.0}, "E -1.0"),
    "not converged": ({"converged": False, "message": "L-BFGS did not converge"}, "converged False"),
    "no beta": ({"beta": DELETE}, "lacks beta"),
    "a curve law": ({"kind": "curve"}, "needs an L(N, D) law"),
    "tiny exponents": ({"alpha": 1e-300, "beta": 1e-300}, "overflow"),
    "control characters in the name": ({"name": "x\x1b[2Jy"}, "name"),
}


@pytest.mark.parametrize("change, says", LAW_CASES.values(), ids=LAW_CASES.keys())
def test_a_bad_law_file_is_refused_naming_the_file_and_coefficient(capsys, tmp_path, monkeypatch, change, says):
    monkeypatch.chdir(tmp_path)
    law = {**GOOD_LAW, **change}
    law = {k: v for k, v in law.items() if v is not DELETE}
    (tmp_path / "law.json").write_text(json.dumps(law))
    refused(capsys, planner_main, ["optimal", "--flops", "1e22", "--law", str(tmp_path / "law.json")], tmp_path,
            f"--law: {tmp_path / 'law.json'}", says)


@pytest.mark.parametrize("content", [b"[1, 2]", b"{not json", bytes(range(256)), b""])
def test_a_law_file_that_is_not_a_law_is_refused(capsys, tmp_path, content):
    (tmp_path / "law.json").write_bytes(content)
    refused(capsys, planner_main, ["optimal", "--flops", "1e22", "--law", str(tmp_path / "law.json")], tmp_path,
            "--law", "law.json")


def test_a_law_file_that_is_a_fifo_is_refused_unread(capsys, tmp_path):
    os.mkfifo(tmp_path / "law.json")
    refused(capsys, planner_main, ["optimal", "--flops", "1e22", "--law", str(tmp_path / "law.json")], tmp_path,
            "law.json", "FIFO")


def test_a_good_law_file_still_plans(capsys, tmp_path):
    (tmp_path / "law.json").write_text(json.dumps(GOOD_LAW))
    assert planner_main(["optimal", "--flops", "5.76e23", "--law", str(tmp_path / "law.json"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["law"] == "fit-nd:runs.csv" and r["params"] > 1e10


def test_a_fit_that_does_not_converge_leaves_an_existing_law_file_as_it_was(capsys, tmp_path, published_data):
    law = tmp_path / "law.json"
    law.write_text(json.dumps(GOOD_LAW))
    before = law.read_bytes()
    code = planner_main(["fit", "nd", str(published_data / "chinchilla_fig4_epoch.csv"), "--n-col", "Model Size",
                         "--flops-col", "Training FLOP", "--loss-col", "loss", "--max-iter", "2", "--out", str(law)])
    err = capsys.readouterr().err
    assert code == 1 and "was not written" in err and law.read_bytes() == before


# ---- ladder files --------------------------------------------------------------------------------------------
@pytest.fixture
def ladder_dir(tmp_path, monkeypatch, capsys) -> Path:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "lad"
    for split in ("train", "eval"):  # what design reads of a packed split
        (tmp_path / split).mkdir()
        (tmp_path / split / "manifest.json").write_text(json.dumps({"seq_len": 64, "vocab_size": 64}))
    assert planner_main(["ladder", "design", "--out", str(out), "--data", str(tmp_path / "train"),
                         "--eval-data", str(tmp_path / "eval"), "--widths", "16,24,32", "--holdout-width", "48",
                         "--vocab", "64", "--seq-len", "64", "--batch-tokens", "1024", "--ladder-flops", "3e11",
                         "--target-flops", "2e11"]) == 0
    capsys.readouterr()
    return out


def edit_ladder(out: Path, fn) -> Path:
    path = out / "ladder.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))
    return path


def _held(meta) -> dict:
    return next(p for p in meta["points"] if p["held_out"])


LADDER_CASES = {
    "held-out name leaves the folder": (lambda m: _held(m).update(name="../../../escaped"), "points[9].name"),
    "a name with a newline": (lambda m: m["points"][0].update(name="a\nb"), "points[0].name"),
    "no held-out point": (lambda m: _held(m).update(held_out=False), "held-out"),
    "two held-out points": (lambda m: m["points"][0].update(held_out=True), "held-out"),
    "negative steps": (lambda m: m["points"][1].update(steps=-3), "points[1].steps"),
    "nan lr": (lambda m: m["points"][2].update(lr=float("nan")), "points[2].lr"),
    "points not a list": (lambda m: m.update(points={}), "points"),
    "negative budget": (lambda m: m.update(target_flops=-1.0), "target_flops"),
    "experiment not text": (lambda m: m.update(experiment=["x"]), "experiment"),
    "duplicate names": (lambda m: m["points"][1].update(name=m["points"][0]["name"]), "appears twice"),
    "missing vocab": (lambda m: m.pop("vocab"), "vocab"),
}


@pytest.mark.parametrize("command", ["predict", "report"])
@pytest.mark.parametrize("fn, key", LADDER_CASES.values(), ids=LADDER_CASES.keys())
def test_a_bad_ladder_json_is_refused_naming_the_key(capsys, ladder_dir, command, fn, key):
    path = edit_ladder(ladder_dir, fn)
    refused(capsys, planner_main, ["ladder", command, str(ladder_dir)], ladder_dir.parent, str(path), key)
    assert not (ladder_dir.parent / "escaped").exists()


def good_prediction(out: Path) -> dict:
    held = _held(json.loads((out / "ladder.json").read_text()))["name"]
    return {"law": {"E": 1.0, "A": 50.0, "B": 80.0, "alpha": 0.4, "beta": 0.35}, "stderr": {}, "converged": True,
            "message": "", "held_out": held, "loss_predicted": 2.5, "band": [2.45, 2.55], "bootstrap": 30,
            "fitted_on": 9}


PREDICTION_CASES = {
    "zero alpha, converged": (lambda p: p["law"].update(alpha=0.0), "law: alpha 0.0"),
    "nan E": (lambda p: p["law"].update(E=float("nan")), "law.E"),
    "no B": (lambda p: p["law"].pop("B"), "law"),
    "converged as text": (lambda p: p.update(converged="yes"), "converged"),
    "another held-out run": (lambda p: p.update(held_out="../x"), "held_out"),
    "infinite prediction": (lambda p: p.update(loss_predicted=float("inf")), "loss_predicted"),
    "band of three": (lambda p: p.update(band=[1, 2, 3]), "band"),
    "law a list": (lambda p: p.update(law=[1, 2]), "law"),
}


@pytest.mark.parametrize("fn, key", PREDICTION_CASES.values(), ids=PREDICTION_CASES.keys())
def test_a_bad_prediction_json_is_refused_before_mlflow_is_asked(capsys, ladder_dir, fn, key):
    pred = good_prediction(ladder_dir)
    fn(pred)
    (ladder_dir / "prediction.json").write_text(json.dumps(pred))
    refused(capsys, planner_main, ["ladder", "report", str(ladder_dir)], ladder_dir.parent,
            str(ladder_dir / "prediction.json"), key)


def test_a_non_converged_prediction_with_exponents_on_the_bound_is_still_read(ladder_dir):
    from planner.laws.ladder import load_ladder, load_prediction

    pred = {**good_prediction(ladder_dir), "converged": False, "message": "alpha ended on\nthe bound"}
    pred["law"]["alpha"] = 0.0
    (ladder_dir / "prediction.json").write_text(json.dumps(pred))
    got = load_prediction(ladder_dir, load_ladder(ladder_dir))
    assert got["converged"] is False and got["message"] == "alpha ended on the bound"


@pytest.mark.parametrize("name", ["ladder.json", "prediction.json"])
def test_ladder_files_that_are_fifos_are_refused_unread(capsys, ladder_dir, name):
    (ladder_dir / name).unlink(missing_ok=True)
    os.mkfifo(ladder_dir / name)
    refused(capsys, planner_main, ["ladder", "report", str(ladder_dir)], ladder_dir.parent, name, "FIFO")


def test_predict_never_writes_through_a_points_link_that_leaves_the_ladder(capsys, ladder_dir, monkeypatch):
    """The held-out run's folder replaced by a link out of the ladder: predict refuses before writing run.yaml."""
    from planner.laws import ladder

    held = _held(json.loads((ladder_dir / "ladder.json").read_text()))["name"]
    away = ladder_dir.parent / "away"
    shutil.copytree(ladder_dir / "points" / held, away)
    shutil.rmtree(ladder_dir / "points" / held)
    (ladder_dir / "points" / held).symlink_to(away)
    runs = {p["name"]: {"n_params": float(p["params"]), "train_tokens": float(p["tokens"]),
                        "eval_loss": 1.0 + 50 / p["params"] ** 0.4 + 80 / p["tokens"] ** 0.35}
            for p in json.loads((ladder_dir / "ladder.json").read_text())["points"]}
    monkeypatch.setattr(ladder, "finished_runs", lambda meta: runs)
    refused(capsys, planner_main, ["ladder", "predict", str(ladder_dir), "--bootstrap", "0"], ladder_dir.parent,
            "outside the ladder folder")


# ---- run.yaml and `planner fit` data: no FIFO, no device, no giant file ---------------------------------------
def test_a_run_yaml_that_is_a_fifo_is_refused_unread(capsys, tmp_path):
    os.mkfifo(tmp_path / "run.yaml")
    refused(capsys, train_main, ["--config", str(tmp_path / "run.yaml")], tmp_path, "run.yaml", "FIFO")


def test_a_device_as_run_yaml_is_refused_unread(capsys, tmp_path):
    refused(capsys, train_main, ["--config", "/dev/zero"], tmp_path, "/dev/zero", "device")


def test_an_oversize_run_yaml_is_refused_unread(capsys, tmp_path, monkeypatch):
    import planner.core.schema as schema

    monkeypatch.setattr(schema, "MAX_CONFIG_BYTES", 1 << 10)
    (tmp_path / "run.yaml").write_text("name: x\n" + "#" * 2000 + "\n")
    refused(capsys, train_main, ["--config", str(tmp_path / "run.yaml")], tmp_path, "run.yaml", "larger than")


def test_a_bare_number_as_run_yaml_names_the_file(capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("5\n")
    refused(capsys, train_main, ["--config", str(tmp_path / "run.yaml")], tmp_path, "run.yaml", "not a mapping")


@pytest.mark.parametrize("name", ["runs.csv", "runs.json"])
def test_fit_data_that_is_a_fifo_is_refused_unread(capsys, tmp_path, name):
    os.mkfifo(tmp_path / name)
    refused(capsys, planner_main, ["fit", "nd", str(tmp_path / name), "--n-col", "n", "--d-col", "d"], tmp_path,
            "DATA", name, "FIFO")


def test_oversize_fit_data_is_refused_unread(capsys, tmp_path, monkeypatch):
    import planner.laws.rundata as rundata

    monkeypatch.setattr(rundata, "MAX_DATA_BYTES", 1 << 10)
    (tmp_path / "runs.csv").write_text("n,d,loss\n" + "1e6,2e7,4.0\n" * 200)
    refused(capsys, planner_main, ["fit", "nd", str(tmp_path / "runs.csv"), "--n-col", "n", "--d-col", "d"],
            tmp_path, "DATA", "runs.csv", "larger than")


@pytest.mark.parametrize("text, expected", [
    ("[1, 2]", "not a JSON object"),
    ('{"train_batch_size": -4}', "train_batch_size -4"),
    ('{"train_micro_batch_size_per_gpu": "2"}', "train_micro_batch_size_per_gpu"),
    ('{"zero_optimization": {"stage": 7}}', "zero_optimization.stage 7"),
    ('{"zero_optimization": 3}', "zero_optimization must be an object"),
    ("{" * 100_000, "not valid JSON"),
])
def test_a_damaged_deepspeed_json_is_refused_by_the_launch_in_one_line(tmp_path, capsys, text, expected):
    from launch.cli import main as launch_main

    shards = tmp_path / "shards"
    write_markov_shards(shards, rows=64)
    job = tmp_path / "job"
    assert planner_main(["emit", "--out", str(job), "--params", "1e8", "--zero", "2", "--gpus", "2",
                         "--micro-batch", "2", "--data", str(shards)]) == 0
    capsys.readouterr()
    (job / "ds_config.json").write_text(text)
    refused(capsys, launch_main, ["local", str(job / "run.yaml"), "--nproc", "2", "--dry-run", "--force"],
            tmp_path, "ds_config", expected)


@pytest.mark.parametrize("journal, state, expected", [
    ('{"kind": "metrics", "step": 1, "ts": 5, "values": {"loss": 2.0}}\n', '{"delivered": 2}', "delivered 2"),
    ('{"kind": "metrics", "step": 1, "ts": 5, "values": {"loss": 2.0}}\n', '{"delivered": -1}', "delivered -1"),
    ('{"kind": "metrics", "step": "x", "ts": 5, "values": {}}\n', '{"delivered": 0}', "metrics.step"),
    ('{"kind": "metrics", "step": 1, "ts": 5, "values": {"loss": "low"}}\n', '{"delivered": 0}', "numbers"),
    ('{"kind": "shell", "cmd": "rm -rf /"}\n', '{"delivered": 0}', "'shell' is not an outbox record"),
    ('[1]\n', '{"delivered": 0}', "not an outbox record"),
    ("", '{"delivered": 0, "run_id": 7}', "run_id 7"),
    ("", "[]", "not an object"),
    ('{"kind": "artifact", "path": "/etc/hostname"}\n', '{"delivered": 0}', "outside the run's folder"),
    ('{"kind": "artifact", "path": "../../secret"}\n', '{"delivered": 0}', "outside the run's folder"),
])
def test_a_damaged_tracking_outbox_is_refused_naming_the_file_and_key(tmp_path, journal, state, expected):
    from planner.core.errors import PlannerError
    from pretrain.tracking import Outbox

    (tmp_path / "outbox.jsonl").write_text(journal)
    (tmp_path / "state.json").write_text(state)
    with pytest.raises(PlannerError, match=expected) as exc:
        Outbox(tmp_path, tmp_path)
    assert str(tmp_path) in str(exc.value)


def test_a_line_torn_by_a_crash_mid_append_is_skipped_not_refused(tmp_path):
    from pretrain.tracking import Outbox

    (tmp_path / "outbox.jsonl").write_text('{"kind": "reopen"}\n{"kind": "metr')
    (tmp_path / "state.json").write_text('{"delivered": 1}')
    assert Outbox(tmp_path, tmp_path).records == [{"kind": "reopen"}]


DEEP = "[" * 100_000 + "]" * 100_000  # past json's recursion limit: a RecursionError, not a ValueError


def test_json_nested_past_the_parsers_depth_is_one_error_in_every_loader(tmp_path):
    from planner.core.errors import PlannerError
    from planner.laws.scaling import load_law
    from pretrain.checkpoint import Checkpointer
    from pretrain.data.shards import TokenShards
    from pretrain.distributed import DistInfo
    from pretrain.tracking import Outbox

    (tmp_path / "law.json").write_text(DEEP)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards/manifest.json").write_text(DEEP)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/meta.json").write_text(DEEP)
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox/outbox.jsonl").write_text(DEEP + "\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state/state.json").write_text(DEEP)
    import torch

    checkpointer = Checkpointer(tmp_path / "ckpt", DistInfo(0, 0, 1, torch.device("cpu")))
    for load in (lambda: load_law(tmp_path / "law.json"), lambda: TokenShards.open(tmp_path / "shards"),
                 lambda: checkpointer.read_meta(tmp_path / "ckpt", 10),
                 lambda: Outbox(tmp_path / "outbox", tmp_path), lambda: Outbox(tmp_path / "state", tmp_path)):
        with pytest.raises(PlannerError, match="nested too deeply"):
            load()
