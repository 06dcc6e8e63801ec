"""Issue 22, the data side: the pipeline config is a typed edge, so what reaches datatrove's Slurm
scripts is a plain word, every curated file stays under out_dir, and a threshold typo fails at load.

Each case writes the shipped sample config with one value changed and runs the data pipeline's own
entry point: it must exit 2 with one line naming the key, and leave the folder as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pretrain.data.pipeline import main as data_main
from tests.test_untrusted_files import refused

SAMPLE = yaml.safe_load((Path(__file__).parents[1] / "configs/data-sample.yaml").read_text())
ROOT = Path(__file__).parents[1]


def config_with(tmp_path: Path, **changes) -> Path:
    """The sample config with `changes` (dotted keys, `__` for `.`) and absolute source paths."""
    doc = yaml.safe_load(yaml.safe_dump(SAMPLE))
    doc["out_dir"] = str(tmp_path / "out")
    for source in doc["sources"]:
        source["path"] = str(ROOT / source["path"])
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("key, value, expected", [
    ("curate__slurm__venv_activate", ".venv/bin/activate; touch pwned", "curate.slurm.venv_activate"),
    ("curate__slurm__venv_activate", "$(touch pwned)", "curate.slurm.venv_activate"),
    ("curate__slurm__sbatch_args", {"account": "a --qos=high"}, "curate.slurm.sbatch_args.account"),
    ("curate__slurm__sbatch_args", {"account": "a`id`"}, "curate.slurm.sbatch_args.account"),
])
def test_a_slurm_setting_that_is_not_a_plain_word_is_refused(tmp_path, capsys, key, value, expected):
    cfg = config_with(tmp_path, **{key: value})
    refused(capsys, data_main, [str(cfg), "curate", "--executor", "slurm", "--quiet"], tmp_path, expected)


def test_an_out_dir_with_shell_syntax_is_refused_for_slurm_before_anything_is_written(tmp_path, capsys):
    cfg = config_with(tmp_path, out_dir=str(tmp_path / "out_$(touch pwned)"))
    refused(capsys, data_main, [str(cfg), "curate", "--executor", "slurm", "--quiet"], tmp_path,
            "out_dir (with --executor slurm)")


@pytest.mark.parametrize("domain", ["../../../x", "a/b", ".hidden", ""])
def test_a_domain_that_is_not_a_folder_name_is_refused(tmp_path, capsys, domain):
    doc_sources = [dict(s, path=str(ROOT / s["path"])) for s in SAMPLE["sources"]]
    doc_sources[0]["domain"] = domain
    cfg = config_with(tmp_path, sources=doc_sources, mix__weights={})
    refused(capsys, data_main, [str(cfg), "curate", "--quiet"], tmp_path, "sources[0].domain")


@pytest.mark.parametrize("path", ["../tok.json", "/tmp/tok.json", "a/../../tok.json", "~/tok.json"])
def test_a_tokenizer_path_outside_out_dir_is_refused(tmp_path, capsys, path):
    cfg = config_with(tmp_path, tokenizer__path=path)
    refused(capsys, data_main, [str(cfg), "tokenizer", "--quiet"], tmp_path, "tokenizer.path")


@pytest.mark.parametrize("change, expected", [
    ({"curate__languages": []}, "curate.languages"),
    ({"curate__languages": ["english"]}, "curate.languages[0]"),
    ({"tokenizer__vocab_size": 100}, "tokenizer.vocab_size"),
    ({"mix__weights": {"finance": [], "general": 1.0}}, "mix.weights.finance"),
])
def test_nonsense_the_pipeline_would_accept_is_refused(tmp_path, capsys, change, expected):
    refused(capsys, data_main, [str(config_with(tmp_path, **change)), "curate", "--quiet"], tmp_path, expected)


@pytest.mark.parametrize("overrides, expected", [
    ({"finanse": {"gopher_quality": {"min_words": 3}}}, "curate.overrides.finanse: no source has domain"),
    ({"finance": None}, "curate.overrides.finance: must be a mapping"),
    ({"finance": {"language": {"min_score": 0.1}}}, "curate.overrides.finance.language: not a step"),
    ({"finance": {"gopher_quality": {"min_word": 3}}}, "min_word: not a threshold of gopher_quality"),
    ({"finance": {"gopher_quality": {"min_words": -3}}}, "min_words: -3 must be a whole number"),
    ({"finance": {"gopher_quality": {"min_alpha_words": "high"}}}, "min_alpha_words: 'high' must be a number"),
    ({"finance": {"c4": {"document_rules": "all"}}}, "document_rules: 'all' is not one of"),
])
def test_a_per_domain_threshold_override_is_checked_against_the_steps_own_arguments(
        tmp_path, capsys, overrides, expected):
    cfg = config_with(tmp_path, curate__overrides=overrides)
    refused(capsys, data_main, [str(cfg), "curate", "--quiet"], tmp_path, expected)


@pytest.mark.parametrize("flags, expected", [
    (["--tasks", "0"], "--tasks"),
    (["--tasks", "1000000000"], "--tasks"),
    (["--workers", "-1"], "--workers"),
])
def test_tasks_and_workers_out_of_bounds_are_refused(tmp_path, capsys, flags, expected):
    refused(capsys, data_main, [str(config_with(tmp_path)), "curate", "--quiet", *flags], tmp_path, expected)


@pytest.mark.parametrize("inside_folder", [False, True])
def test_a_source_that_is_a_fifo_is_refused_unread(tmp_path, capsys, inside_folder):
    import os

    folder = tmp_path / "src"
    folder.mkdir()
    fifo = folder / "docs.jsonl"
    os.mkfifo(fifo)
    sources = [dict(s, path=str(ROOT / s["path"])) for s in SAMPLE["sources"]]
    sources[0]["path"] = str(folder if inside_folder else fifo)
    cfg = config_with(tmp_path, sources=sources)
    refused(capsys, data_main, [str(cfg), "curate", "--quiet"], tmp_path, "docs.jsonl: is a FIFO")


def test_the_synthetic_generator_refuses_to_replace_an_existing_dataset(tmp_path, capsys):
    from pretrain.data.synthetic import main as synthetic_main
    from pretrain.data.synthetic import write_markov_shards

    write_markov_shards(tmp_path / "shards", rows=257)
    refused(capsys, synthetic_main, [str(tmp_path / "shards"), "--rows", "11"], tmp_path, "--force")
    assert synthetic_main([str(tmp_path / "shards"), "--rows", "11", "--force"]) == 0
