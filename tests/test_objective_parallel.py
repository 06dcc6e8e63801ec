"""The encoder (MLM) and the encoder-decoder (span corruption) under the pipeline engine and tensor parallelism, on 2
gloo processes (the encoder's pipeline on 4), against one plain process on the same batches (as
tests/test_pipeline_train.py and tests/test_tensor_parallel.py hold the decoder): the same losses within bf16
tolerance, each rank's model states the planner's to the byte and its first micro-batch's saved activations the
planner's.

The encoder's pipeline runs GPipe over 4 layers (2 a stage), each stage TP 2 inside (its MLM transform, whole on each
TP rank, sits on another device mesh than the TP-split weights: the gradient norm spans both). The encoder-decoder's
runs interleaved 1F1B over its 2 encoder and 3 decoder blocks in 4 virtual stages (enc0 | enc1 dec0 | dec1 | dec2),
so both of its carries cross a stage: the encoder's (hidden state, its bias, the embedded decoder inputs, the
decoder's bias) and the decoder's (hidden state, the encoder's output, the decoder's bias). TP 2 splits heads (T5's
relative position bias by heads too), the MLPs and the vocabulary. Masks are drawn per data-parallel rank: every
layout here has one, as one process does, so the batches are the same to the token.
"""

from functools import cache
from pathlib import Path

import pytest

from planner.model.shapes import span_corruption_raw_length
from pretrain.data.synthetic import write_markov_shards
from tests.test_pretrain_runs import summary, trained

SEQ_LEN = 64
ARCHS = {  # untied heads: a pipeline and TP keep the head apart from the embedding
    "encoder": ["model.arch=encoder", "model.layers=4", "model.vocab=300", "model.tied_embeddings=false"],
    "encoder-decoder": ["model.arch=encoder-decoder", "model.layers=2", "model.decoder_layers=3", "model.vocab=300",
                        "model.tied_embeddings=false"],
}
PIPELINES = {"encoder": ["parallel.pp_schedule=gpipe", "parallel.tp=2"],  # 4 processes: PP 2 x TP 2
             "encoder-decoder": ["parallel.pp_schedule=interleaved-1f1b", "parallel.pp_virtual=2"]}
LAYOUTS = {"pp2": lambda arch: ["parallel.engine=fsdp", "parallel.pp=2", *PIPELINES[arch]],
           "tp2": lambda arch: ["parallel.engine=fsdp", "parallel.tp=2"]}
NPROC = {("encoder", "pp2"): 4}
#: 3 steps of 4 micro-batches of 2 sequences (the pipeline's m = 4)
TINY = ["train.steps=3", "optim.lr=0.01", "optim.warmup_steps=1", "train.checkpoint_every=10", "tracking.enabled=false",
        "parallel.micro_batch=2", "parallel.grad_accum=4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Markov shards: rows of 65 tokens (MLM reads 64) and of span corruption's 70 raw tokens for 64 inputs."""
    root = tmp_path_factory.mktemp("data")
    write_markov_shards(root / "encoder", rows=64, seq_len=SEQ_LEN)
    write_markov_shards(root / "encoder-decoder", rows=64, seq_len=span_corruption_raw_length(SEQ_LEN) - 1)
    return root


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    """`runs(arch, layout)`: the summary of a run (`one`: one plain process), trained once per module."""
    @cache
    def get(arch: str, layout: str) -> dict:
        extra, nproc = (["parallel.engine=single"], 1) if layout == "one" else \
            (LAYOUTS[layout](arch), NPROC.get((arch, layout), 2))
        cwd = trained(tmp_path_factory, f"{arch}-{layout}",
                      [f"data.train={shards / arch}", *TINY, *ARCHS[arch], *extra], nproc=nproc)
        return summary(cwd / "run")

    return get


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_pp_and_tp_train_the_losses_of_one_process(arch, layout, runs):
    parallel, one = runs(arch, layout), runs(arch, "one")
    assert parallel["steps"] == 3 and parallel["tokens_seen"] == one["tokens_seen"] == 3 * 8 * SEQ_LEN
    for (step, loss), (_, one_loss) in zip(parallel["losses"], one["losses"], strict=True):
        assert loss == pytest.approx(one_loss, rel=2e-3), step  # bf16 tolerance; measured within 3e-4


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_each_rank_holds_the_planners_model_states_and_activations(arch, layout, runs):
    s = runs(arch, layout)
    stages = s["stages"] if layout == "pp2" else [s]
    assert len(stages) == (2 if layout == "pp2" else 1)
    for stage in stages:
        assert stage["model_state_bytes_measured"] == stage["model_state_bytes_predicted"]  # to the byte, line by line
        # TP: every term (the scalar loss apart); PP: as the decoder's stages (measured within 1%: the schedule's
        # micro-batches are views of the step's batch, so the ids the first stage's embedding keeps and the labels the
        # loss keeps hold the whole step's storage, m x b x s x 8 bytes, where the planner counts one micro-batch's)
        tolerance = 0.05 if layout == "pp2" else 1e-4
        assert stage["activation_bytes_predicted"] == pytest.approx(stage["activation_bytes_measured"], rel=tolerance)
