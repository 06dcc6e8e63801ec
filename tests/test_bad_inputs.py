"""Every entry point against bad input, as an adversarial user would type it.

Each case must end with exit status 2, exactly one line on stderr naming what is wrong, no
traceback, and no file in the working folder created, changed or removed. The entry points run
in-process (their `main(argv)`), which is what their console scripts call.
"""

import hashlib
import os
from pathlib import Path

import pytest

from launch.cli import main as launch_main
from planner.cli import main as planner_main
from pretrain.data.pipeline import main as pipeline_main
from pretrain.data.synthetic import main as synthetic_main
from pretrain.train import main as train_main

ENTRY = {"planner": planner_main, "launch": launch_main, "pretrain": train_main, "pretrain-data": pipeline_main,
         "synthetic": synthetic_main}

FILES = {
    "list.yaml": b"- a\n- b\n",
    "bad.yaml": b"a: [1,\n  b: }\n",
    "binary.yaml": bytes(range(256)) * 4,
    "tagged.yaml": b"name: !!python/object/apply:os.system ['touch pwned']\n",
    "scalar.yaml": b"just a string\n",
    "unknown_key.yaml": b"bogus: 1\n",
    "header.csv": b"n,d,loss\n",
    "binary.csv": bytes(range(256)) * 4,
    "notjson.json": b"{not json",
    "afile": b"a file where a folder is expected\n",
    "hosts": b"127.0.0.1 slots=2\n127.0.0.1 slots=2\n",
    "badhosts": b"127.0.0.1 slots=two\n",
    "catalog.yaml": bytes(range(256)) * 4,
    "run.yaml": b"name: ok\nmodel: {layers: 2, hidden: 64, heads: 4}\ndata: {train: shards}\n",
    "pipe.yaml": b"out_dir: out\nsources: [{path: x.jsonl, domain: d}]\n",
    "runs.csv": b"n,d,loss\n1e6,2e7,4.0\n2e6,4e7,3.7\n4e6,8e7,3.5\n8e6,1.6e8,3.3\n1.6e7,3.2e8,3.2\n",
    "badshards/manifest.json": b"{not json",
    "emptysrc.yaml": b"out_dir: out\nsources: [{path: '', domain: d}]\n",
    "runx/mlflow-offline/outbox.jsonl": b'{"kind": "reopen"}\n',
    "runx/mlflow-offline/state.json": b'{"delivered": 0, "experiment": "e", "run_name": "r"}',
    "mine/PLAN.md": b"somebody's own notes, in a folder given to emit\n",
    # achieved rates above the data sheet's peak; and a GPU without the link between its node's GPUs
    "fast.yaml": b"g: {memory_gib: 80, peak_tflops: {bf16: 100}, price_per_hour: 2, matmul_tflops: {bf16: 1000}}\n",
    "nolink.yaml": b"g: {memory_gib: 80, peak_tflops: {bf16: 989}, price_per_hour: 2, hbm_gbps: 3350, "
                   b"network_gbps: 50}\n",
}

P, L, T, D, S = "planner", "launch", "pretrain", "pretrain-data", "synthetic"
EST = ("estimate", "--params", "7e9")
CASES = [
    # planner estimate: numbers out of range or not numbers
    (P, ["estimate", "--params", "-5"]), (P, ["estimate", "--params", "abc"]), (P, ["estimate", "--params", "1e30"]),
    (P, ["estimate", "--params", "1e-3"]), (P, ["estimate", "--params", "nan"]), (P, ["estimate", "--params", "inf"]),
    (P, [*EST, "--gpus", "0"]), (P, [*EST, "--gpus", "-1"]), (P, [*EST, "--gpu", "x100"]),
    (P, ["estimate", "--model", "foo"]), (P, ["estimate", "--layers", "2", "--hidden", "4000", "--heads", "48",
                                             "--vocab", "100"]),
    (P, ["estimate", "--layers", "2", "--hidden", "64"]), (P, [*EST, "--mfu", "-0.1"]), (P, [*EST, "--mfu", "1.5"]),
    (P, [*EST, "--mfu", "nan"]), (P, [*EST, "--runtime-gib", "nan"]), (P, [*EST, "--runtime-gib", "-1"]),
    (P, [*EST, "--fragmentation", "0.9"]), (P, [*EST, "--fragmentation", "nan"]), (P, [*EST, "--price", "nan"]),
    (P, [*EST, "--price", "-1"]), (P, [*EST, "--tokens", "nan"]), (P, [*EST, "--tokens", "0"]),
    (P, [*EST, "--micro-batch", "0"]), (P, [*EST, "--tp", "3"]), (P, [*EST, "--zero", "5"]),
    (P, [*EST, "--fsdp", "x"]), (P, [*EST, "--fsdp", "full", "--offload", "optimizer"]),
    (P, [*EST, "--fsdp", "hybrid", "--sharding-factor", "3"]), (P, [*EST, "--seq-len", "0"]),
    (P, [*EST, "--gpu-catalog", "{w}/catalog.yaml"]), (P, [*EST, "--gpu-catalog", "{w}/missing.yaml"]),
    (P, [*EST, "--gpu-catalog", "{w}/list.yaml"]), (P, ["estimate", "--layers", "2", "--hidden", "64", "--heads", "4",
                                                      "--vocab", "100", "--kv-heads", "3"]),
    (P, [*EST, "--precision", "fp8"]), (P, [*EST, "--zero", "1", "--fsdp", "full"]), (P, ["estimate"]),
    (P, [*EST, "--offload", "params", "--zero", "2"]), (P, ["estimate", "--params", "7e9", "--model", "llama-7b"]),
    # values so small or large that the days, memory or step overflow; layouts the trainer cannot run
    (P, [*EST, "--mfu", "1e-320"]), (P, [*EST, "--seq-len", "10000000000"]),
    (P, [*EST, "--micro-batch", "100000000000"]),
    (P, [*EST, "--gpus", "16", "--fsdp", "full", "--pp", "4", "--microbatches", "100000000000"]),
    (P, ["estimate", "--tokens", "1e10", "--layers", "8", "--hidden", "1024", "--heads", "16", "--vocab", "32000",
         "--experts", "8", "--expert-ffn", "2048", "--dense-layers", "8"]),
    (P, ["estimate", "--model", "llama2-7b", "--gpus", "24", "--tp", "3"]),
    (P, ["estimate", "--layers", "4", "--hidden", "512", "--heads", "8", "--kv-heads", "2", "--vocab", "1000",
         "--gpus", "4", "--fsdp", "full", "--tp", "4"]),
    (P, [*EST, "--pp-virtual", "2", "--pp-schedule", "interleaved-1f1b"]),
    (P, [*EST, "--gpu-catalog", "{w}/fast.yaml", "--gpu", "g"]),
    (P, ["compare", "--model", "llama2-7b", "--gpus", "16", "--gpu-catalog", "{w}/nolink.yaml", "--gpu", "g",
         "--search"]),
    (P, ["compare", "--model", "llama2-7b", "--mfu", "0.5"]), (P, ["compare", "--model", "llama2-7b", "--plot", ""]),
    (P, ["verify", "--config", "{w}/run.yaml", "--gpus", "1000"]),  # was silently ignored
    (P, ["probe", "--out", "/dev/null"]), (P, ["probe", "--out", "{w}/missing/this-cpu.yaml"]),
    # planner optimal
    (P, ["optimal"]), (P, ["optimal", "--flops", "1e22", "--days", "3"]), (P, ["optimal", "--flops", "1"]),
    (P, ["optimal", "--flops", "nan"]), (P, ["optimal", "--flops", "1e10", "--params", "1e12"]),
    (P, ["optimal", "--flops", "1e22", "--law", "foo"]), (P, ["optimal", "--flops", "1e22", "--law", "{w}/notjson.json"]),
    (P, ["optimal", "--flops", "1e22", "--law", "tokens-per-param", "--tokens-per-param", "nan"]),
    (P, ["optimal", "--flops", "1e22", "--max-epochs", "nan"]), (P, ["optimal", "--flops", "1e22", "--max-epochs", "0.5"]),
    (P, ["optimal", "--flops", "1e22", "--mfu", "0"]), (P, ["optimal", "--days", "3", "--gpus", "0"]),
    (P, ["optimal", "--dollars", "1e6", "--price", "nan"]), (P, ["optimal", "--params", "1e30"]),
    (P, ["optimal", "--days", "30", "--gpu", "foo"]), (P, ["optimal", "--flops", "1e22", "--max-tokens", "nan"]),
    # planner fit
    (P, ["fit", "nd", "{w}/missing.csv", "--n-col", "n", "--d-col", "d"]),
    (P, ["fit", "nd", "{w}/header.csv", "--n-col", "n", "--d-col", "d"]),
    (P, ["fit", "nd", "{w}/binary.csv", "--n-col", "n", "--d-col", "d"]),
    (P, ["fit", "nd", "{w}/header.csv", "--n-col", "nope", "--d-col", "d"]),
    (P, ["fit", "nd", "{w}/header.csv", "--n-col", "n"]),
    (P, ["fit", "curve", "{w}/header.csv", "--x-col", "n", "--bootstrap", "-1"]),
    (P, ["fit", "isoflop", "{w}/notjson.json", "--n-col", "n", "--d-col", "d"]),
    (P, ["fit", "curve", "{w}/missing.csv", "--x-col", "n"]),
    (P, ["fit", "curve", "{w}/runs.csv", "--x-col", "d", "--run-col", "nope"]),
    # MLflow stores that are not there, not MLflow, or not answering: one line, no hang, no store created
    (P, ["fit", "nd", "mlflow:x", "--n-col", "n", "--d-col", "d"]),
    (P, ["fit", "nd", "mlflow:x", "--tracking-uri", "bogus://x", "--n-col", "n", "--d-col", "d"]),
    (P, ["fit", "curve", "mlflow:x", "--tracking-uri", "http://127.0.0.1:1", "--x-col", "d"]),
    (T, ["sync-mlflow", "{w}/runx", "--tracking-uri", "bogus://y"]),
    # planner emit: values that would reach a script, and nonsense
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--name", "a\nrm -rf ~"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--name", "$(id)"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--name", ""]),
    (P, ["emit", "--out", "", "--params", "1e9"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--time", "forever"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--time", "1:00\n#SBATCH --x"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--partition", "p;id"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--lr", "nan"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--lr", "-1"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--checkpoint-every", "-1"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--eval-every", "0"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--batch-tokens", "0"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--nodes", "0"]),
    (P, ["emit", "--out", "{w}/afile", "--params", "1e9"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--data", "a\nb"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--batch-tokens", "1.5"]),
    (P, ["emit", "--out", "{w}/e", "--params", "1e9", "--gpus", "8", "--fsdp", "full", "--pp", "2",
         "--microbatches", "8", "--global-batch", "64"]),
    (P, ["emit", "--out", "{w}/mine", "--params", "1e9"]),
    # planner verify
    (P, ["verify", "--params", "1e9", "--zero", "3"]), (P, ["verify", "--params", "1e9", "--tp", "2", "--gpus", "8"]),
    (P, ["verify", "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "100", "--mlp", "gelu"]),
    (P, ["verify", "--params", "1e9", "--checkpointing", "selective"]),
    # launch: configs that are not mappings, flags that would reach a command
    (L, ["local", "{w}/missing.yaml"]), (L, ["local", "{w}"]), (L, ["local", "{w}/list.yaml"]),
    (L, ["local", "{w}/bad.yaml"]), (L, ["local", "{w}/binary.yaml"]), (L, ["local", "{w}/tagged.yaml"]),
    (L, ["local", "{w}/scalar.yaml"]), (L, ["local", "{w}/unknown_key.yaml"]),
    (L, ["local", "{w}/run.yaml", "--master-port", "99999"]), (L, ["local", "{w}/run.yaml", "--nproc", "0"]),
    (L, ["nodes", "{w}/run.yaml", "--hostfile", "{w}/hosts", "--node-rank", "0", "--master-addr", ""]),
    (L, ["nodes", "{w}/run.yaml", "--hostfile", "{w}/hosts", "--node-rank", "0", "--master-addr", "a b"]),
    (L, ["nodes", "{w}/run.yaml", "--hostfile", "{w}/hosts", "--node-rank", "0", "--master-addr", "h",
         "--max-restarts", "-3"]),
    (L, ["nodes", "{w}/run.yaml", "--hostfile", "{w}/hosts", "--node-rank", "0", "--master-addr", "h",
         "--master-port", "0"]),
    (L, ["nodes", "{w}/run.yaml", "--hostfile", "{w}/badhosts", "--node-rank", "0", "--master-addr", "h"]),
    (L, ["nodes", "{w}/run.yaml", "--hostfile", "{w}/missing", "--node-rank", "0", "--master-addr", "h"]),
    (L, ["slurm", "{w}/run.yaml", "--nodes", "2", "--time", "forever"]),
    (L, ["slurm", "{w}/run.yaml", "--nodes", "2", "--partition", "a\nb"]),
    (L, ["slurm", "{w}/run.yaml", "--nodes", "0"]),
    (L, ["slurm", "{w}/run.yaml", "--nodes", "2", "--dry-run", "out_dir=x\n#SBATCH --x"]),
    (L, ["local", "{w}/run.yaml", "--nproc", "100000000"]), (L, ["demo", "--out", "{w}/loop"]),
    # pretrain.train
    (T, ["--config", "{w}/list.yaml"]), (T, ["--config", "{w}/bad.yaml"]), (T, ["--config", "{w}/binary.yaml"]),
    (T, ["--config", "{w}/tagged.yaml"]), (T, ["--config", "{w}"]), (T, ["--config", "{w}/missing.yaml"]),
    (T, ["--config", "{w}/unknown_key.yaml"]), (T, ["--config", "{w}/run.yaml", "train.steps=three"]),
    (T, ["--config", "{w}/run.yaml", "optim.lr=nan"]), (T, ["--config", "{w}/run.yaml", "name=a/b"]),
    (T, ["--config", "{w}/run.yaml", "train.keep_last_checkpoints=0"]),
    (T, ["--config", "{w}/run.yaml", "model.heads=3"]),
    (T, ["--config", "{w}/run.yaml", "name=x #y"]),  # YAML's comment: was silently name=x
    (T, ["--config", "{w}/run.yaml", "out_dir=a\nb"]),  # was read as 'a b'
    (D, ["{w}/pipe.yaml", "all", "out_dir=o #x"]),
    # the data pipeline
    (D, ["{w}/list.yaml"]), (D, ["{w}/bad.yaml"]), (D, ["{w}/binary.yaml"]), (D, ["{w}/tagged.yaml"]),
    (D, ["{w}/missing.yaml"]), (D, ["{w}"]), (D, ["{w}/pipe.yaml", "all", "tokenizer.vocab_size=-5"]),
    (D, ["{w}/pipe.yaml", "all", "curate.minhash_ngram=0"]), (D, ["{w}/pipe.yaml", "all", "mix.max_epochs=nan"]),
    (D, ["{w}/pipe.yaml", "all", "mix.eval_fraction=1.5"]), (D, ["{w}/pipe.yaml", "all", "mix.weights.d=nan"]),
    (D, ["{w}/emptysrc.yaml", "all"]), (D, ["{w}/pipe.yaml", "all", "sources.0.text_field=x"]),
    (D, ["{w}/pipe.yaml", "all", "curate.slurm.sbatch_args.requeue=false"]),
    (D, ["{w}/pipe.yaml", "all", "curate.slurm.venv_activate=-x"]),
    # the synthetic generator
    (S, ["{w}/syn", "--rows", "0"]), (S, ["{w}/syn", "--vocab", "-1"]), (S, ["{w}/syn", "--seq-len", "0"]),
    (S, ["{w}/afile"]), (S, ["{w}/syn", "--rows", "x"]), (D, ["{w}/pipe.yaml", "bogus-stage"]),
    # a file where a folder is expected, for every command that writes
    (P, ["fit", "curve", "{w}/runs.csv", "--x-col", "d", "--out", "{w}/afile/law.json"]),
    (P, ["fit", "curve", "{w}/runs.csv", "--x-col", "d", "--plot", "{w}/afile/fit.png"]),
    (D, ["{w}/pipe.yaml", "all", "out_dir={w}/afile/out"]),
    (T, ["--config", "{w}/run.yaml", "data.train={w}/badshards"]),
    (S, ["{w}/afile/syn"]),
    (T, ["--config"]), (D, []),
]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if not p.is_symlink() and p.is_file()}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    for name, data in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")  # a symlink loop where a folder is expected
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_there_are_at_least_a_hundred_cases_over_every_entry_point():
    assert len(CASES) >= 100 and {entry for entry, _ in CASES} == set(ENTRY)


@pytest.mark.parametrize("entry, argv", CASES, ids=[f"{e}:{' '.join(a)[:60]}" for e, a in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(work, capsys, entry, argv):
    before = _tree(work)
    try:
        code = ENTRY[entry]([a.replace("{w}", str(work)) for a in argv])
    except SystemExit as exc:  # argparse usage errors exit from inside the parser, as a console script would
        code = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.out[-500:], captured.err[-1500:])
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-1500:]
    assert _tree(work) == before and not (work / "pwned").exists()
    assert os.getcwd() == str(work)


def test_a_header_only_csv_says_it_has_no_rows(work, capsys):
    assert planner_main(["fit", "nd", str(work / "header.csv"), "--n-col", "n", "--d-col", "d"]) == 2
    assert "has no rows" in capsys.readouterr().err


def test_a_folder_given_as_a_config_is_called_a_folder(work, capsys):
    assert train_main(["--config", str(work)]) == 2
    assert "is a folder" in capsys.readouterr().err
