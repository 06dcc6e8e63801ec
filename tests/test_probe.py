"""`planner probe`: this machine measured as a catalog entry, priced by the step-time model, logged by the run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from planner.cli.probe import catalog_entry
from planner.model.hardware import load_catalog
from tests.conftest import run_cli

#: What a probe of a small CPU might return (the real probe's figures vary with the machine).
MEASURED = {"threads": 1, "cpus": 2, "memory_gib": 16.0, "fp32_flops": 80e9, "bf16_flops": 0.8e9,
            "copy_bytes_per_s": 8e9, "allreduce_bus_bytes_per_s": 0.5e9, "shard_bus_bytes_per_s": 0.2e9,
            "all_gather_bus_bytes_per_s": 0.25e9, "fp32_attention_flops": 20e9, "bf16_attention_flops": 4e9}


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text(catalog_entry("this-cpu", MEASURED))
    return path


def test_the_probe_writes_a_cpu_entry_the_catalog_reads_with_its_figures(catalog):
    cpu = load_catalog(catalog)["this-cpu"]
    assert cpu.device == "cpu" and cpu.peak_flops("fp32") == pytest.approx(80e9)
    assert cpu.hbm_gbps == pytest.approx(8.0) and cpu.network_gbps == pytest.approx(0.5)
    assert cpu.interconnect_gbps == pytest.approx(1.0)  # both directions, as NVLink is counted
    assert cpu.attention_tflops == {"fp32": pytest.approx(0.02), "bf16": pytest.approx(0.004)}


def test_a_probed_machine_is_priced_at_its_measured_rates(catalog):
    from planner.compute.step_time import PROBED
    from planner.model.shapes import ModelShape
    from planner.plan.estimate import estimate
    from planner.plan.request import EstimateRequest

    shape = ModelShape(4, 512, 8, 4096, 256)
    req = EstimateRequest.from_flags(shape=shape, gpus=1, micro_batch=8, gpu="this-cpu", catalog=load_catalog(catalog),
                                     precision="fp32")
    t = estimate(req).time
    assert "planner probe" in t["model"] and PROBED.matmul_max == 1.0
    # the matmuls at the probed fp32 rate: 2 FLOPs per parameter per token, three passes, plus the head
    tokens = 8 * 256
    matmul = tokens * (3 * 2 * 4 * (shape.attention_params() + shape.mlp_params()) + 6 * 4096 * 512) / 80e9
    assert t["breakdown_s"]["matmul"] == pytest.approx(matmul, rel=1e-6)
    # attention at the probed SDPA rate: 4 s^2 heads head_dim FLOPs a sequence per pass, three passes, causal half
    # (the probe times SDPA's forward and backward against three passes: its rate already holds the backward's
    # recomputed scores)
    attention = 8 * 4 * 4 * 256**2 * 8 * 64 * 3 / 2 / 20e9
    assert t["breakdown_s"]["attention"] == pytest.approx(attention, rel=1e-6)


def test_sharded_data_parallel_traffic_moves_at_the_probed_gather_and_scatter_rate(catalog):
    # gloo's all-gather and reduce-scatter run at a fraction of its all-reduce: FSDP's traffic is priced at theirs
    from planner.model.shapes import ModelShape
    from planner.plan.estimate import estimate
    from planner.plan.request import EstimateRequest

    shape, cpu = ModelShape(4, 512, 8, 4096, 256), load_catalog(catalog)
    assert cpu["this-cpu"].shard_collectives_gbps == pytest.approx(0.2)
    fsdp = estimate(EstimateRequest.from_flags(shape=shape, gpus=2, gpus_per_node=2, micro_batch=8, fsdp="full",
                                               gpu="this-cpu", catalog=cpu, precision="fp32")).time
    # fp32: reduce-scatter the gradients, all-gather the parameters twice; each moves half the rank's bytes
    moved = 3 * 0.5 * 4 * shape.param_count()
    assert fsdp["breakdown_s"]["data_parallel_exposed"] == pytest.approx(moved / 0.2e9, rel=1e-3)


def test_zero2_all_reduces_at_the_probed_all_reduce_rate_and_gathers_at_the_probed_all_gather_rate(catalog):
    # DeepSpeed's stage 2 all-reduces each gradient bucket whole (gloo's all-reduce), then all-gathers the updated
    # parameters (gloo's all-gather alone): not the reduce-scatter + all-gather pair FSDP is priced at
    from planner.model.shapes import ModelShape
    from planner.plan.estimate import estimate
    from planner.plan.request import EstimateRequest

    shape, cpu = ModelShape(4, 512, 8, 4096, 256), load_catalog(catalog)
    assert cpu["this-cpu"].all_gather_gbps == pytest.approx(0.25)
    zero2 = estimate(EstimateRequest.from_flags(shape=shape, gpus=2, gpus_per_node=2, micro_batch=8, zero=2,
                                                gpu="this-cpu", catalog=cpu, precision="fp32")).time
    # fp32, two ranks: the all-reduce moves 2 (n - 1) / n of the gradient, the gather (n - 1) / n of the parameters
    half = 0.5 * 4 * shape.param_count()
    assert zero2["breakdown_s"]["data_parallel_exposed"] == pytest.approx(2 * half / 0.5e9 + half / 0.25e9, rel=1e-3)


def test_probe_refuses_a_name_that_is_not_a_plain_word():
    out = run_cli("probe", "--name", "my cpu; rm")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--name" in out.stderr


def test_the_probes_measurements_are_this_machines_rates():
    from pretrain.hardware_probe import (
        attention_flops,
        collective_bus_bytes_per_s,
        copy_bytes_per_s,
        matmul_flops,
    )

    torch.set_num_threads(1)
    assert 1e8 < matmul_flops(torch.float32, 256) < 1e13  # a core does 0.1-10,000 GFLOP/s
    assert 1e8 < copy_bytes_per_s(16 * 2**20) < 1e12
    assert 1e7 < attention_flops(torch.float32, batch=1, seq=64) < matmul_flops(torch.float32, 256) * 2
    assert all(1e6 < bus < 1e12 for bus in collective_bus_bytes_per_s(4 * 2**20))


def test_a_run_planned_on_this_cpu_logs_the_predicted_step_time_beside_the_measured(tmp_path, catalog):
    from mlflow.tracking import MlflowClient

    from pretrain.data.synthetic import write_markov_shards

    write_markov_shards(tmp_path / "shards", vocab=256, seq_len=64, rows=256)
    job = tmp_path / "job"
    assert run_cli("emit", "--out", str(job), "--gpu-catalog", str(catalog), "--gpu", "this-cpu", "--gpus", "1",
                   "--precision", "fp32", "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "256",
                   "--seq-len", "64", "--micro-batch", "8", "--batch-tokens", "512", "--tokens", "1536",
                   "--data", str(tmp_path / "shards"), "--tracking-uri", f"sqlite:///{job}/mlflow.db").returncode == 0
    planned = json.loads((job / "plan.json").read_text())
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # the run's folder is relative: under this test's tmp_path
    out = subprocess.run([sys.executable, "-m", "launch.cli", "local", str(job / "run.yaml"), "--nproc", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{job}/mlflow.db")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    predicted = client.get_metric_history(run.info.run_id, "step_time_s_predicted")
    assert predicted and predicted[0].value == pytest.approx(planned["step_time_s"])
    assert len(client.get_metric_history(run.info.run_id, "step_time_s")) == 3


@pytest.mark.parametrize("name", ["yes", "null", "0x10", "1_000"])
def test_an_entry_named_like_a_yaml_boolean_null_or_number_is_read_back_by_its_name(tmp_path, name):
    path = tmp_path / "cpu.yaml"
    path.write_text(catalog_entry(name, MEASURED))
    assert load_catalog(path)[name].device == "cpu"
