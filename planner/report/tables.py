"""Human-readable tables for the planner's results (the non-`--json` output)."""

from __future__ import annotations

from tabulate import tabulate

from planner.core.units import GiB, human_count

_STATE_LINES = ("weights", "gradients", "master_weights", "optimizer")


def _gib(value: float) -> str:
    return f"{value / GiB:,.2f}"


def _sci(value: float) -> str:
    return f"{value:.3e}"


def render_estimate(r: dict) -> str:
    m, hw, tr, c = r["model"], r["hardware"], r["training"], r["compute"]
    params = r["params"]
    shape = (f"{m['layers']} layers x {m['hidden']} hidden, {m['heads']} heads"
             f" ({m['kv_heads']} kv), ffn {m['ffn_hidden']}, vocab {m['vocab']}, seq {m['seq_len']}")
    if m.get("arch", "decoder") != "decoder":  # an encoder, or an encoder-decoder's stacks and split
        shape += f", {m['arch']}" + (f" ({m['decoder_layers']} decoder layers, {m['target_len']} target tokens)"
                                     if m["arch"] == "encoder-decoder" else f" ({m['encoder_head']} head)")
    how = m["source"].replace("params (shape of ", "snapped to ").rstrip(")") if "shape of" in m["source"] \
        else "LLaMA-style, hidden/layers ~ 128"
    inferred = f" [shape inferred from --params: {how}; used for activations and attention FLOPs only]" \
        if m["shape_inferred"] else ""
    moe = m.get("moe")
    if moe:
        shared = f" + {moe['shared_experts']} shared ({moe['shared_ffn'] or moe['expert_ffn']})" \
            if moe["shared_experts"] else ""
        dense = f", first {moe['dense_layers']} layers dense" if moe["dense_layers"] else ""
        routing = f"capacity factor {moe['capacity_factor']:g}" if moe["capacity_factor"] else "dropless"
        shape += (f"; MoE: {moe['experts']} experts (ffn {moe['expert_ffn']}), top-{moe['top_k']}{shared}{dense}, "
                  f"{routing}")
    head = [
        f"Model      {human_count(params)} parameters ({params:,.0f}); {shape}{inferred}",
        f"Hardware   {hw['gpus']} x {hw['description']} ({hw['memory_gib']:g} GiB, "
        f"{hw['peak_tflops']:g} dense {hw['compute_dtype']} TFLOP/s), {hw['nodes']} node(s)",
        f"Training   {tr['precision']}, {tr['optimizer']}, {tr['strategy']} (shard degree {tr['shard_degree']}"
        f"{', expert parallel ' + str(r['layout']['ep']) if r['layout'].get('ep', 1) > 1 else ''}"
        f"{', offload ' + tr['offload'] if tr['offload'] != 'none' else ''}), micro-batch {tr['micro_batch']}"
        f" x {tr['seq_len']} tokens, checkpointing {tr['checkpointing']}, "
        f"{'flash attention' if tr['flash_attention'] else 'no flash attention'}, "
        f"accounting: {tr['convention']}",
    ]
    if moe:
        active = m["active_params"]
        head.insert(1, f"Active     {human_count(active)} parameters per token ({active:,.0f}, "
                       f"{active / params:.1%} of the total): FLOPs and MFU count these")
    x = r.get("moe")
    if x:
        head.append(f"MoE        {x['experts_per_rank']} of {x['experts']} experts per GPU (ep {x['ep']}); model states "
                    f"per GPU: experts {_gib(x['expert_states_per_gpu_bytes'])} GiB, the rest "
                    f"{_gib(x['other_states_per_gpu_bytes'])} GiB; all-to-all buffers "
                    f"{_gib(x['all_to_all_buffer_bytes'])} GiB while a layer runs; {x['routing']}, busiest expert at "
                    f"{x['load_factor']:g}x its mean load ({x['load_factor_source']})")
    ft = r.get("finetune")
    if ft:
        detail = {"lora": f", rank {ft['rank']} on {','.join(ft['modules'] or [])}",
                  "qlora": f", rank {ft['rank']} on {','.join(ft['modules'] or [])}, 4-bit NF4 base",
                  "prompt": f", {ft['soft_tokens']} soft tokens"}.get(ft["method"], "")
        head.append(f"Fine-tune  {ft['method']}{detail}: {ft['trainable_params']:,} trainable parameters "
                    f"({ft['trainable_share']:.4%} of the model; {ft['source']})")
    return "\n\n".join([
        "\n".join(head),
        *([_pipeline_table(r["pipeline"])] if r.get("pipeline") else []),
        _memory_table(r),
        _fit_table(r),
        _compute_table(c, hw, r),
        _teaching_table(r["rule_of_thumb"]),
    ])


def _pipeline_table(p: dict) -> str:
    """Every pipeline rank: its layers, the micro-batches its schedule keeps in flight, its peak."""
    rows = [[s["rank"], ",".join(map(str, s["stages"])), s["layers"],
             "+".join(x for x, on in (("embedding", s["embedding"]), ("head", s["head"])) if on) or "-",
             f"{s['microbatches_in_flight']:g}", _gib(s["memory_bytes"]["total"]), s["peak_moment"]]
            for s in p["stages"]]
    head = (f"Pipeline   {p['pp']} ranks, {p['schedule']}, {p['virtual_stages_per_rank']} stage(s) per rank, "
            f"{p['microbatches']} micro-batches per step; bubble {p['bubble_fraction']:.1%} of compute time "
            "(the per-GPU figures below are the worst stage's)")
    return head + "\n" + tabulate(rows, headers=["rank", "stages", "layers", "also holds", "in flight", "GiB",
                                                 "peak at"], tablefmt="simple", disable_numparse=True)


def _memory_table(r: dict) -> str:
    """The peak's lines, then the same lines at the step's other moments (so a zero is explained by its moment)."""
    mem, cpu, params, peak = r["memory_per_gpu_bytes"], r["cpu_memory_per_gpu_bytes"], r["params"], r["peak_moment"]
    others = [m for m in r["memory_per_moment_bytes"] if m != peak]
    rows = []
    for key in (*_STATE_LINES, "activations", "logits", "overhead", "fragmentation", "total"):
        per_param = f"{mem.get(key, 0.0) / params:.3f}" if key in _STATE_LINES or key == "total" else ""
        row = [key.replace("_", " "), per_param, _gib(mem.get(key, 0.0))]
        row += [_gib(r["memory_per_moment_bytes"][m].get(key, 0.0)) for m in others]
        if cpu["total"]:
            row.append(_gib(cpu.get(key, 0.0)) if key in _STATE_LINES or key == "total" else "")
        rows.append(row)
    headers = ["Memory per GPU", "B/param", f"GiB at the peak ({peak})", *(f"GiB at {m}" for m in others)] \
        + (["CPU GiB (offload)"] if cpu["total"] else [])
    per_param = ", ".join(f"{k} {v:g}" for k, v in r["bytes_per_param"].items()
                          if k not in ("total", "model_states_per_gpu"))
    states = r["model_states_per_gpu_bytes"]
    note = (f"Model states before sharding: {r['bytes_per_param']['total']:g} B/param ({per_param}); "
            f"GiB = 2^30 bytes.\nModel states per GPU: {states / 1e9:,.4g} GB (decimal, as the ZeRO paper) = "
            f"{_gib(states)} GiB.")
    ds = r.get("peer_estimates", {}).get("deepspeed_estimator_model_states_gpu_bytes")
    if ds is not None:
        note += "\n" + _peer_note(ds, states, r)
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True) + "\n" + note


def _peer_note(ds: float, ours: float, r: dict) -> str:
    """DeepSpeed's estimator beside ours, with "equal" or the one reason they differ."""
    head = f"DeepSpeed's own estimator: {_gib(ds)} GiB of model states per GPU (ours {_gib(ours)} GiB"
    if abs(ours - ds) <= 0.005 * max(ours, ds):
        return head + ": equal)."
    shard = 2 * r["params"] / r["training"]["shard_degree"]
    if abs(ours - ds - shard) <= 0.005 * ours:
        return head + f": DeepSpeed leaves out the 16-bit parameter shard, 2N/GPUs = {_gib(shard)} GiB)."
    split = r["training"]["tp"] * (r["pipeline"] or {}).get("pp", 1)
    if split > 1 and ours < ds:  # its estimator takes the whole model on every data-parallel rank
        return head + f": DeepSpeed's estimator splits the model by neither TP nor PP, {split} ways here)."
    more = f"{_gib(ours - ds)} GiB more" if ours > ds else f"{_gib(ds - ours)} GiB fewer"
    return head + f": ours counts {more}, see README 'Which bytes-per-parameter convention')."


def _fit_table(r: dict) -> str:
    cap, total = r["gpu_memory_bytes"], r["memory_per_gpu_bytes"]["total"]
    verdict = "yes" if r["fits"] else "NO"
    lines = [f"Fits on {r['hardware']['gpu']} ({_gib(cap)} GiB): {verdict}, {_gib(total)} GiB needed, "
             f"headroom {_gib(r['headroom_bytes'])} GiB; largest micro-batch that fits: {r['max_micro_batch']}"]
    per_node = r["hardware"]["gpus_per_node"]
    rows = [[name, "-" if n is None else f"{n:,}",
             "-" if n is None else f"{r['min_nodes_to_fit'][name]:,} ({r['min_nodes_to_fit'][name] * per_node:,} GPUs)"]
            for name, n in r["min_gpus_to_fit"].items()]
    lines.append(tabulate(rows, headers=["Strategy", "Fewest GPUs that fit", f"whole nodes of {per_node}"],
                          tablefmt="simple", disable_numparse=True))
    return "\n".join(lines)


def _time_rows(r: dict) -> list[list[str]]:
    """The step-time model's step and MFU, and which MFU the days and dollars use."""
    t, c = r.get("time"), r["compute"]
    how = {"--mfu": "given by --mfu", "predicted": "predicted by the step-time model",
           "default": "the default (no step-time model for this GPU: its catalog entry lacks hbm_gbps, "
                      "network_gbps or interconnect_gbps)"}[r.get("mfu_source", "--mfu")]
    used = (f"MFU used: {c['mfu']:.1%}, {how}", "")
    if not t:
        return [list(used)]
    b = t["breakdown_s"]
    parts = ", ".join(f"{name.replace('_', ' ')} {seconds:.3g}" for name, seconds in b.items() if seconds > 0)
    k = t["kernel_tflops"]
    return [["step time (predicted)", f"{t['step_time_s']:.3g} s ({parts})"],
            ["kernel ceilings (TFLOP/s)", f"GEMM {k['matmul']:.4g}, flash attention {k['flash_attention']:.4g} "
                                            "(what they reach on this GPU: planner gpus)"],
            ["tokens/s per GPU (predicted)", f"{t['tokens_per_s_per_gpu']:,.0f}"],
            ["MFU / HFU (predicted)", f"{t['mfu_predicted']:.1%} / {t['hfu_predicted']:.1%}"], list(used)]


def _compute_table(c: dict, hw: dict, r: dict | None = None) -> str:
    rows = [*_time_rows(r or {"compute": c}),
        ["tokens", human_count(c["tokens"])],
        ["FLOPs, 6ND" + (" (N active)" if (r or {}).get("model", {}).get("moe") else ""), _sci(c["flops_6nd"])],
        ["FLOPs, 6ND + attention (model FLOPs)", _sci(c["flops"])],
        ["FLOPs incl. recomputation (hardware)", _sci(c["hardware_flops"])],
        ["petaFLOP/s-days", f"{c['pf_days']:,.1f}"],
        [f"GPU-hours at MFU {c['mfu']:.1%} of model FLOPs (= {c['mfu_6nd']:.1%} on 6ND)", f"{c['gpu_hours']:,.0f}"],
        [f"wall-clock days on {c['gpus']} GPUs", f"{c['wall_days']:,.2f}"],
        [f"cost at ${hw['price_per_gpu_hour']:.2f}/GPU-hour", f"${c['cost_usd']:,.0f}"],
        ["throughput (whole job)", f"{c['tokens_per_second']:,.0f} tokens/s"],
        [f"1 PF/s-day = GPU-days of {hw['gpu']} at peak", f"{c['gpu_days_per_pf_day']:.2f}"],
    ]
    return tabulate(rows, headers=["Compute", ""], tablefmt="simple", disable_numparse=True)


def _teaching_table(t: dict) -> str:
    rows = [
        ["fp32 weights (4 B/param)", f"{t['fp32_weights_gb']:,.1f} GB"],
        ["train in fp32 with Adam (4+8+4+~8 = 24 B/param)",
         f"{t['fp32_adam_training_gb']:,.1f} GB ({t['training_to_weights_ratio']:g}x the weights)"],
        ["16-bit weights (2 B/param)", f"{t['fp16_weights_gb']:,.1f} GB"],
        ["int8 weights (1 B/param)", f"{t['int8_weights_gb']:,.1f} GB"],
    ]
    return tabulate(rows, headers=["Rule of thumb (teaching figures, decimal GB)", ""], tablefmt="simple",
                    disable_numparse=True)


def render_gpus(catalog: dict) -> str:
    from planner.model.hardware import achievable_tflops

    rows = []
    for g in catalog.values():
        peaks = ", ".join(f"{k} {v:g}" for k, v in g.peak_tflops.items())
        reach = "-"
        if g.device == "gpu" and "bf16" in g.peak_tflops:  # what the step time prices its bf16 kernels at
            published = "bf16" in g.matmul_tflops and "bf16" in g.flash_attention_tflops
            reach = " / ".join(f"{achievable_tflops(g, key, 'bf16'):.0f}"
                               for key in ("matmul_tflops", "flash_attention_tflops")) + ("" if published else " *")
        rows.append([g.name, g.description, f"{g.memory_gib:g}", peaks, reach, f"{g.price_per_hour:.2f}"])
    table = tabulate(rows, headers=["GPU", "", "GiB", "dense peak TFLOP/s", "bf16 GEMM / flash reach", "$/GPU-h"],
                     tablefmt="simple", disable_numparse=True)
    return table + ("\nreach: what a large GEMM and FlashAttention-2 achieve, published (planner/model/hardware.py);"
                    "\n* none published: the mean share of peak of the GPUs that have one")


def render_optimal(r: dict) -> str:
    b = r["budget"]
    budget = tabulate([
        ["FLOPs for the law, C = 6ND", _sci(b["flops_6nd"])],
        ["model FLOPs (6ND + attention)", _sci(b["flops"])], ["petaFLOP/s-days (model FLOPs)", f"{b['pf_days']:,.1f}"],
        [f"GPU-hours ({b['gpu']}, MFU {b['mfu']:.1%} of model FLOPs)", f"{b['gpu_hours']:,.0f}"],
        [f"days on {b['gpus']} GPUs", f"{b['days']:,.1f}"],
        [f"dollars at ${b['price_per_gpu_hour']:.2f}/GPU-hour", f"${b['dollars']:,.0f}"],
    ], headers=["Budget", ""], tablefmt="simple", disable_numparse=True)
    loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
    rows = [["parameters N", f"{human_count(r['params'])} ({r['params']:.4g})"],
            ["tokens D", f"{human_count(r['tokens'])} ({r['tokens']:.4g})"],
            ["tokens per parameter", f"{r['tokens_per_param']:.1f}"],
            ["predicted loss", loss]]
    if r["constraint"] != "none":
        gap = "-" if r["loss_gap"] is None else f"+{r['loss_gap']:.4f}"
        rows += [["constraint", r["constraint"] + (f", {r['epochs']:.2f} epochs" if r.get("epochs") else "")],
                 ["unconstrained N*, D*", f"{human_count(r['unconstrained_params'])}, "
                                          f"{human_count(r['unconstrained_tokens'])}"],
                 ["loss above the unconstrained optimum", gap]]
    if "numerical_check" in r:
        rows.append(["closed form vs numerical N*", f"{r['numerical_check']['rel_diff_params']:.1e} relative"])
    s = r["suggested_shape"]
    rows.append(["suggested shape", f"{s['layers']} layers x {s['hidden']} hidden, {s['heads']} heads, ffn "
                                    f"{s['ffn_hidden']} ({human_count(s['params'])} = {s['params']:,})"])
    head = f"Law: {r['law']} ({r['law_params'].get('source', '')})"
    return "\n\n".join([head, budget, tabulate(rows, headers=["Compute-optimal", ""], tablefmt="simple",
                                                        disable_numparse=True)])


def render_fit(r: dict) -> str:
    keys = {"nd": ("E", "A", "B", "alpha", "beta"), "curve": ("E", "A", "alpha"),
            "isoflop": ("a", "b", "params_coeff", "tokens_coeff")}[r["kind"]]
    rows = [[k, f"{r[k]:.6g}", f"± {r['stderr'][k]:.3g}" if k in r["stderr"] else ""] for k in keys]
    title = {"nd": "L(N, D) = E + A/N^alpha + B/D^beta", "curve": "L(x) = E + A·x^-alpha",
             "isoflop": "N* = params_coeff·C^a, D* = tokens_coeff·C^b"}[r["kind"]]
    out = [f"{title}   ({r['n_points']} points{', converged' if r['converged'] else ', NOT CONVERGED'})",
           tabulate(rows, headers=["", "value", "bootstrap s.e."], tablefmt="simple", disable_numparse=True)]
    if "target" in r:
        t = r["target"]
        band = f" (95% band {t['loss_lo95']:.4f} - {t['loss_hi95']:.4f})" if "loss_lo95" in t else ""
        out.append(f"Extrapolated loss at x = {t['x']:.4g}: {t['loss']:.4f}{band}")
    if r["kind"] == "isoflop":
        out.append(tabulate([[f"{m['flops']:.3g}", human_count(m["params"]), human_count(m["tokens"]),
                              f"{m['loss']:.4f}", m["runs"]] for m in r["minima"]],
                            headers=["budget FLOPs", "N*", "D*", "min loss", "runs"], tablefmt="simple",
                            disable_numparse=True))
    return "\n".join(out)
