"""Sanity checks the smoke mode asserts on a finished run (every part of the pipeline)."""

from __future__ import annotations

from pathlib import Path


def sanity_problems(report: dict, per_request: dict[str, dict[str, list[dict]]], pngs: list[Path]) -> list[str]:
    problems = []
    for s in report["systems"]:
        name = s["name"]
        if s.get("skipped"):
            if s.get("kind") != "vllm":  # vLLM may be absent; our server must run
                problems.append(f"{name}: {s['skipped']}")
            continue
        if not s["runs"]:
            problems.append(f"{name}: no runs")
        for run in s["runs"]:
            label = f"{name} {run['mode']} {run['rate'] or ''}".strip()
            if run["errors"] or run["completed"] != run["num_requests"]:
                problems.append(f"{label}: {run['completed']}/{run['num_requests']} completed, first error: {run['first_error']}")
            if not run["ttft_ms"]["p50"] or run["ttft_ms"]["p50"] <= 0:
                problems.append(f"{label}: no TTFT measured")
            att = run["slo_attainment"]
            if att is not None and not 0.0 <= att <= 1.0:
                problems.append(f"{label}: SLO attainment {att} out of range")
            if run["output_tokens_per_s"] <= 0:
                problems.append(f"{label}: zero throughput")
            counters = (run.get("server_metrics") or {}).get("counters") or {}
            gen = counters.get("bucketserve_generation_tokens_total")
            records = per_request.get(name, {}).get(f"rate={run['rate']:g}" if run["mode"] == "rate" else "offline", [])
            client_tokens = sum(r["output_tokens"] for r in records)
            if s["kind"] == "bucketserve" and gen is not None and int(gen) != client_tokens:
                problems.append(f"{label}: server counted {gen:.0f} generated tokens, clients received {client_tokens}")
        for label, records in per_request.get(name, {}).items():
            for r in records:
                if r["error"] is None and r["output_tokens"] != r["expected_output_tokens"]:
                    problems.append(f"{name} {label} request {r['index']}: {r['output_tokens']} output tokens, workload asked for {r['expected_output_tokens']} (ignore_eos/min_tokens not honoured)")
                    break
                if r["server_prompt_tokens"] is not None and abs(r["server_prompt_tokens"] - r["prompt_tokens"]) > 1:
                    problems.append(f"{name} {label} request {r['index']}: server counted {r['server_prompt_tokens']} prompt tokens, workload built {r['prompt_tokens']}")
                    break
        if s["kind"] == "bucketserve" and s.get("capacity", {}).get("bound") in (None, "none"):
            problems.append(f"{name}: no rate-at-SLO estimate")
    if not report.get("slo", {}).get("slo_ttft_ms"):
        problems.append("no SLO thresholds")
    for p in pngs:
        if not p.is_file() or p.stat().st_size < 1000:
            problems.append(f"plot {p} missing or empty")
    if len(pngs) < 3:
        problems.append(f"expected at least 3 plots, got {len(pngs)}")
    return problems
