"""Curation on datatrove's executors: tasks, markers, resume after kill -9, global dedup against brute force."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_data_pipeline import readme_documents

CONFIG = REPO / "configs/data-sample.yaml"


def curate(out: Path, tasks: int, workers: int = 2, *overrides: str, config: Path = CONFIG) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain.data.pipeline", str(config), "curate", f"out_dir={out}",
                           "curate.chunk_bytes=65536", *overrides, "--executor", "local", "--tasks", str(tasks),
                           "--workers", str(workers)], capture_output=True, text=True, timeout=600, cwd=REPO)


def kept(out: Path) -> bytes:
    """Every kept document of every domain, the tasks' files read in rank order."""
    return b"".join(p.read_bytes() for d in sorted((out / "curated").iterdir()) for p in sorted(d.glob("task-*.jsonl")))


@pytest.fixture(scope="module")
def one_task(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "out"
    r = curate(out, 1, 1)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_one_task_and_eight_give_byte_identical_kept_documents_and_counts(one_task, tmp_path):
    r = curate(tmp_path / "eight", 8)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kept(one_task) == kept(tmp_path / "eight") and len(kept(one_task)) > 100_000
    a, b = (json.loads((o / "curation_report.json").read_text()) for o in (one_task, tmp_path / "eight"))
    assert a["steps"] == b["steps"] and a["domains"] == b["domains"]
    assert (one_task / "exclusions.jsonl").read_bytes() == (tmp_path / "eight/exclusions.jsonl").read_bytes()


def test_every_task_leaves_a_completion_marker_and_a_rerun_does_nothing_again(tmp_path):
    out = tmp_path / "out"
    assert curate(out, 4).returncode == 0
    markers = sorted(p.name for p in (out / "work/logs/signatures/completions").iterdir())
    assert markers == ["00000", "00001", "00002", "00003"]
    before = {p: p.stat().st_mtime_ns for p in (out / "curated").rglob("*.jsonl")}
    assert curate(out, 4).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "curated").rglob("*.jsonl")} == before


def test_tasks_killed_with_sigkill_and_rerun_give_the_uninterrupted_output(one_task, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pretrain.data.pipeline", str(CONFIG), "curate", f"out_dir={out}",
           "curate.chunk_bytes=65536", "--executor", "local", "--tasks", "8", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    completions = out / "work/logs/signatures/completions"
    deadline = time.time() + 120
    while time.time() < deadline and (not completions.is_dir() or len(list(completions.iterdir())) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-pass
    proc.wait()
    done = len(list(completions.iterdir()))
    assert 3 <= done < 8, f"{done} tasks had finished when killed"
    r = curate(out, 8)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kept(out) == kept(one_task)
    assert (out / "exclusions.jsonl").read_bytes() == (one_task / "exclusions.jsonl").read_bytes()


def test_the_exclusion_file_lists_every_dropped_document_with_its_reason_and_what_it_duplicates(one_task):
    report = json.loads((one_task / "curation_report.json").read_text())
    rows = [json.loads(line) for line in (one_task / "exclusions.jsonl").read_text().splitlines()]
    dropped = sum(d["docs_in"] - d["docs_out"] for d in report["domains"].values())
    assert len(rows) == dropped and [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    dups = [r for r in rows if r["step"] in ("exact_dedup", "minhash_dedup")]
    assert dups and all(r["duplicate_of"] and r["duplicate_of_key"] < r["key"] for r in dups)
    assert all(r["jaccard"] >= 0.8 for r in dups)


def test_datatrove_logs_each_filter_step_by_name_with_its_counts_and_time(one_task):
    # datatrove's stats.json for the first pass names our steps, counts what each forwarded and dropped (by
    # reason), and times them; the drops agree with our own exclusion file
    stats = json.loads((one_task / "work/logs/signatures/stats.json").read_text())
    filters = {s["name"].split(": ", 1)[1]: s for s in stats if "FILTER" in s["name"]}
    assert list(filters) == ["gopher_quality", "gopher_repetition", "c4", "language", "pii", "no_text"]
    rows = [json.loads(line) for line in (one_task / "exclusions.jsonl").read_text().splitlines()]
    for name, s in filters.items():
        counts = s["stats"]
        assert counts["total"] == counts["forwarded"] + counts.get("dropped", 0) and s["time_stats"]["total"] > 0
        assert counts.get("dropped", 0) == sum(r["step"] == name for r in rows), name
        assert sum(v for k, v in counts.items() if k.startswith("dropped_")) == counts.get("dropped", 0)
    assert filters["gopher_quality"]["stats"]["dropped"] > 0


@pytest.mark.parametrize("tasks, override, says", [(3, "curate.c4=true", "tasks 1 -> 3"),
                                                   (1, "curate.jaccard_threshold=0.7", "curate.jaccard_threshold 0.8 -> 0.7")])
def test_a_work_folder_made_with_other_tasks_or_settings_is_refused_in_one_line(one_task, tasks, override, says):
    r = curate(one_task, tasks, 1, override)
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_pack_reads_the_executor_output(one_task):
    from pretrain.data.config import load_pipeline_config
    from pretrain.data.mix import pack
    from pretrain.data.tokenizer import train_tokenizer

    cfg = load_pipeline_config(CONFIG, [f"out_dir={one_task}", "tokenizer.vocab_size=512", "mix.seq_len=64"])
    cfg.sources = [type(s)(**{**s.__dict__, "path": str(REPO / s.path)}) for s in cfg.sources]
    train_tokenizer(cfg)
    result = pack(cfg, progress=False)
    assert result["train"]["documents"] > 900


def _brute_force(docs: list[tuple[str, str]], threshold: float) -> set[str]:
    """Exact copies first, then every survivor against every earlier kept one: dropped when J >= threshold."""
    from benchmarks.bench_dedup_recall import exact_copies

    dropped, survivors = exact_copies(docs)
    kept = []
    for doc_id, s in survivors:
        if any(len(s & k) / len(s | k) >= threshold for _, k in kept):
            dropped.add(doc_id)
        else:
            kept.append((doc_id, s))
    return dropped


def test_minhash_agreement_estimates_the_jaccard_of_real_document_pairs():
    # each permutation must act as a random one: P(minimum agrees) = J, the premise of the banding
    import numpy as np

    from pretrain.data.dedup.minhash import MinHasher
    from pretrain.data.dedup.signatures import jaccard, normalise, shingle_hashes

    hasher, errors = MinHasher(400), []
    for _, text in list(readme_documents())[:40]:
        words = text.split()
        for keep in (0.95, 0.85, 0.7):  # the document against itself with the tail rewritten
            edited = " ".join(words[: int(len(words) * keep)] + [w[::-1] for w in words[int(len(words) * keep):]])
            a, b = (shingle_hashes(normalise(t), 5) for t in (text, edited))
            errors.append((hasher.signature(a) == hasher.signature(b)).mean() - jaccard(a, b))
    assert abs(np.mean(errors)) < 0.01 and np.sqrt(np.mean(np.square(errors))) < 0.04


def test_dedup_precision_and_recall_against_brute_force_jaccard_on_real_documents(tmp_path):
    docs = list(readme_documents())
    # the real documents, then a second copy of every fifth with a few words changed, then exact copies
    variants = [(f"{i}-edit", text.replace(" the ", " a ", 3)) for i, (_, text) in enumerate(docs[::5])]
    copies = [(f"{i}-copy", text) for i, (_, text) in enumerate(docs[::7])]
    corpus = docs + variants + copies
    source = tmp_path / "real.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in corpus))
    config = tmp_path / "c.yaml"
    config.write_text(f"sources: [{{path: {source}, domain: web}}]\ncurate: {{gopher_quality: false, "
                      "gopher_repetition: false, c4: false, language: false, pii: false}\n")
    r = curate(tmp_path / "out", 4, 2, config=config)
    assert r.returncode == 0, r.stderr[-3000:]
    ours = {json.loads(x)["id"] for x in (tmp_path / "out/exclusions.jsonl").read_text().splitlines()}
    truth = _brute_force(corpus, 0.8)
    from benchmarks.bench_dedup_recall import exact_answer

    assert exact_answer(corpus) == truth  # the benchmark's set-similarity join is exact here too
    precision, recall = len(ours & truth) / len(ours), len(ours & truth) / len(truth)
    print(f"{len(corpus)} documents, {len(truth)} duplicates by brute force: precision {precision:.4f}, recall {recall:.4f}")
    assert len(truth) > 50 and precision >= 0.99 and recall >= 0.99


@pytest.mark.slow
def test_a_local_ray_cluster_runs_the_same_passes_with_the_same_output(one_task, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    r = subprocess.run([sys.executable, "-m", "pretrain.data.pipeline", str(CONFIG), "curate", f"out_dir={out}",
                        "curate.chunk_bytes=65536", "--executor", "ray", "--tasks", "4", "--workers", "2"],
                       capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "# Curation report" in r.stdout and len(list((out / "work/logs/signatures/completions").iterdir())) == 4
    assert kept(out) == kept(one_task)
    assert (out / "exclusions.jsonl").read_bytes() == (one_task / "exclusions.jsonl").read_bytes()
    a, b = (json.loads((o / "curation_report.json").read_text()) for o in (one_task, out))
    assert a["steps"] == b["steps"] and a["domains"] == b["domains"]


def test_the_ray_executor_says_what_is_missing_when_ray_is_not_installed(tmp_path):
    # sys.modules["ray"] = None makes `import ray` fail as it does where the [ray] extra is not installed
    code = ("import sys; sys.modules['ray'] = None; from pretrain.data.pipeline import main; "
            f"sys.exit(main([{str(CONFIG)!r}, 'curate', 'out_dir={tmp_path}', '--executor', 'ray']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "ray package is not installed here (pip install -e '.[ray]'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("override, key", [("curate.slurm.partition=a;rm", "curate.slurm.partition"),
                                           ("curate.slurm.time=soon", "curate.slurm.time"),
                                           ("curate.chunk_bytes=10", "curate.chunk_bytes")])
def test_slurm_settings_that_reach_a_script_are_validated_at_load(override, key, tmp_path):
    r = curate(tmp_path, 2, 1, override)
    assert r.returncode == 2 and key in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_default_task_count_is_one_per_input_chunk_at_most_64(tmp_path):
    from pretrain.data.chunks import MAX_DEFAULT_TASKS, default_tasks
    from pretrain.data.documents import Source

    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_text("".join(json.dumps({"id": i, "text": "word " * 40}) + "\n" for i in range(100)))
    small.write_text(json.dumps({"id": 0, "text": "one line"}) + "\n")
    sources = [Source(str(big), "general"), Source(str(small), "finance")]
    assert big.stat().st_size == 22_290
    assert default_tasks(sources, 4096) == 6 + 1  # ceil(22,290 / 4,096) chunks, and the small file's one
    assert default_tasks(sources, 64) == MAX_DEFAULT_TASKS
    assert default_tasks(sources, 1 << 30) == 2


@pytest.mark.parametrize("squeue, message", [
    ("echo 'squeue: error: Unable to contact slurm controller' >&2; exit 1", "squeue failed (squeue: error: Unable"),
])
def test_when_squeue_cannot_say_what_is_queued_nothing_is_submitted(tmp_path, monkeypatch, squeue, message):
    from planner.core.errors import PlannerError
    from pretrain.data.config import load_pipeline_config
    from pretrain.data.executors import refuse_if_queued

    bin_dir = tmp_path / "bin"  # Slurm's own command, failing as it does when the controller is down
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\n{squeue}\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = load_pipeline_config(REPO / "configs/data-sample.yaml", [f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(PlannerError, match=re.escape(message)):
        refuse_if_queued(cfg, ["signatures"])  # before: an empty answer, so every pass was submitted again


def test_a_bad_ray_address_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from planner.core.errors import PlannerError
    from pretrain.data.executors import _ray_executor

    monkeypatch.setenv("RAY_ADDRESS", "not-an-address")
    with pytest.raises(PlannerError, match="cannot join the Ray cluster at RAY_ADDRESS='not-an-address'"):
        _ray_executor([], 1, 1, tmp_path / "logs", None)


def test_a_damaged_work_array_is_one_line_saying_how_to_redo_its_pass(tmp_path):
    import numpy as np

    from planner.core.errors import PlannerError
    from pretrain.data.workdir import load_array

    np.save(tmp_path / "good.npy", np.arange(64))
    (tmp_path / "short.npy").write_bytes((tmp_path / "good.npy").read_bytes()[:100])
    (tmp_path / "text.npy").write_text("garbage\n")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert load_array(tmp_path / "good.npy").tolist() == list(range(64))
    for name in ("short", "text", "pickled"):
        with pytest.raises(PlannerError, match=f"{name}.npy: a damaged curation work file .* run curate again"):
            load_array(tmp_path / f"{name}.npy")


def test_a_missing_band_file_of_one_task_is_refused_not_bucketed_without_it(tmp_path):
    import numpy as np

    from planner.core.errors import PlannerError
    from pretrain.data.config import load_pipeline_config
    from pretrain.data.workdir import WorkDir

    wd = WorkDir.of(load_pipeline_config(CONFIG, [f"out_dir={tmp_path}"]))
    wd.layout_file.parent.mkdir(parents=True)
    wd.layout_file.write_text(json.dumps({"tasks": 2}))
    wd.band("exact", 0).parent.mkdir(parents=True)
    np.save(wd.band("exact", 0), np.zeros(0))  # task 1's file lost: its duplicates would silently vanish
    with pytest.raises(PlannerError, match=r"bands/exact: no band file of task\(s\) \[1\]"):
        wd.check_bands("exact")


def test_a_source_folder_that_gains_a_file_is_another_input_on_the_rerun(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_bytes((REPO / "data/sample/finance.jsonl").read_bytes())
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'out'}\nsources: [{{path: {src}, domain: finance}}]\n")
    assert curate(tmp_path / "out", 1, 1, config=cfg).returncode == 0
    (src / "b.jsonl").write_bytes((REPO / "data/sample/general.jsonl").read_bytes())
    r = curate(tmp_path / "out", 1, 1, config=cfg)  # was exit 0 with the first run's output
    assert r.returncode == 2 and "made with other settings (source_bytes" in r.stderr
