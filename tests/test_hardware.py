"""GPU catalog: required entries, dense peaks, and user overrides from YAML."""

import pytest

from planner.core.errors import PlannerError
from planner.model.hardware import BUILTIN_GPUS, get_gpu, load_catalog

REQUIRED = ["v100", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "b200", "mi300x", "l40s"]


def test_catalog_has_every_required_gpu_with_memory_peak_and_price():
    for name in REQUIRED:
        gpu = BUILTIN_GPUS[name]
        assert gpu.memory_gib > 0 and gpu.price_per_hour > 0 and gpu.peak_tflops


@pytest.mark.parametrize("name, dtype, tflops", [("v100", "fp16", 125), ("a100-80gb", "bf16", 312),
                                                ("a100-40gb", "fp32", 19.5), ("h100-sxm", "bf16", 989),
                                                ("h100-pcie", "bf16", 756), ("h200", "bf16", 989),
                                                ("b200", "bf16", 2250), ("mi300x", "bf16", 1307.4),
                                                ("l40s", "bf16", 362.05)])
def test_dense_peaks_match_the_data_sheets(name, dtype, tflops):
    # Vendor data sheets, dense (not "with sparsity") figures.
    assert get_gpu(name).peak_tflops[dtype] == tflops


def test_user_catalog_overrides_a_price_and_adds_a_gpu(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("a100-80gb:\n  price_per_hour: 1.10\nmy-gpu:\n  memory_gib: 24\n"
                    "  peak_tflops: {bf16: 100}\n  price_per_hour: 0.5\n")
    catalog = load_catalog(path)
    assert catalog["a100-80gb"].price_per_hour == 1.10 and catalog["a100-80gb"].peak_tflops["bf16"] == 312
    assert get_gpu("my-gpu", catalog).memory_bytes == 24 * 2**30


def test_user_catalog_with_an_unknown_field_is_refused(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("x:\n  memory: 24\n")
    with pytest.raises(PlannerError, match="unknown fields"):
        load_catalog(path)


@pytest.mark.parametrize("name, hbm", [("v100", 900), ("a100-40gb", 1555), ("a100-80gb", 2039), ("h100-sxm", 3350),
                                       ("h100-pcie", 2000), ("h200", 4800), ("b200", 8000), ("mi300x", 5300),
                                       ("l40s", 864)])
def test_memory_bandwidth_matches_the_data_sheets(name, hbm):
    assert BUILTIN_GPUS[name].hbm_gbps == hbm


def test_a_user_catalog_sets_the_bandwidths_the_step_time_needs_and_refuses_negative_ones(tmp_path):
    path = tmp_path / "cat.yaml"
    path.write_text("h100-sxm: {hbm_gbps: 3000, network_gbps: 100}\n")
    gpu = load_catalog(path)["h100-sxm"]
    assert (gpu.hbm_gbps, gpu.network_gbps, gpu.memory_gib) == (3000, 100, 80)
    path.write_text("h100-sxm: {network_gbps: -5}\n")
    with pytest.raises(PlannerError, match="h100-sxm.network_gbps"):
        load_catalog(path)


@pytest.mark.parametrize("name, matmul, flash", [("a100-80gb", 271.2, 189.0), ("a100-40gb", 271.2, 189.0),
                                                 ("h100-sxm", 794.5, 326.0), ("h200", 794.5, 326.0)])
def test_what_the_kernels_reach_is_the_published_measurement(name, matmul, flash):
    # Bekman's MAMF table (BF16); FlashAttention-2 forward + backward, causal, head dim 128, 16k (Dao 2023 Fig. 4(d)
    # on A100; on H100 from the FlashAttention-3 paper's FA2 bars: 3.5 / (1/335 + 2.5/322))
    gpu = BUILTIN_GPUS[name]
    assert (gpu.matmul_tflops["bf16"], gpu.flash_attention_tflops["bf16"]) == (matmul, flash)


def test_a_gpu_without_published_rates_reaches_the_catalogs_mean_share_of_its_peak():
    from planner.model.hardware import achievable_tflops

    share = (271.2 / 312 + 794.5 / 989) / 2  # the A100's 86.9% and the H100's 80.3%
    assert achievable_tflops(BUILTIN_GPUS["b200"], "matmul_tflops", "bf16") == pytest.approx(2250 * share)
    # a dtype without its own figure: the GPU's own bf16 share of the dtype's peak
    assert achievable_tflops(BUILTIN_GPUS["a100-80gb"], "matmul_tflops", "fp32") == pytest.approx(19.5 * 271.2 / 312)
    assert achievable_tflops(BUILTIN_GPUS["h100-sxm"], "matmul_tflops", "fp8") == 1402.6


def test_a_user_catalog_sets_the_rates_its_kernels_reach(tmp_path):
    path = tmp_path / "cat.yaml"
    path.write_text("h100-sxm: {matmul_tflops: {bf16: 700}}\n")
    gpu = load_catalog(path)["h100-sxm"]
    assert gpu.matmul_tflops == {"bf16": 700.0, "fp8": 1402.6} and gpu.flash_attention_tflops == {"bf16": 326.0}
    path.write_text("h100-sxm: {flash_attention_tflops: {bf16: 0}}\n")
    with pytest.raises(PlannerError, match="h100-sxm.flash_attention_tflops.bf16"):
        load_catalog(path)


def test_a_gpu_without_its_nodes_link_is_planned_at_the_default_mfu_and_the_estimate_names_the_missing_field(
        tmp_path, capsys):
    from planner.cli import main

    path = tmp_path / "cat.yaml"
    path.write_text("g: {memory_gib: 80, peak_tflops: {bf16: 989}, price_per_hour: 2, hbm_gbps: 3350, "
                    "network_gbps: 50}\n")
    assert main(["estimate", "--model", "llama2-7b", "--gpus", "16", "--gpu-catalog", str(path), "--gpu", "g"]) == 0
    out = capsys.readouterr().out
    assert "MFU used: 40.0%, the default" in out and "interconnect_gbps" in out
    path.write_text(path.read_text().replace("network_gbps: 50", "network_gbps: 50, interconnect_gbps: 900"))
    assert main(["estimate", "--model", "llama2-7b", "--gpus", "16", "--gpu-catalog", str(path), "--gpu", "g"]) == 0
    assert "predicted by the step-time model" in capsys.readouterr().out
