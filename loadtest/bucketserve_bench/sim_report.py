"""Reports of a simulated scenario: setup description, markdown tables, plots.

The per-workload plots are the serving benchmark's own (report.plots) drawn from the
simulated runs; comparisons.png puts the paper's ratios beside ours.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bucket_scheduler.core.memory import GIB
from bucket_scheduler.core.sim.systems import default_config
from bucket_scheduler.core.sim.workload import describe

from . import report as rep


def describe_workload(wl) -> dict:
    return {**asdict(wl), "summary": describe(wl.requests(None))}


def describe_setup(cluster, args) -> dict:
    g = cluster.gpu
    return {
        "gpus": cluster.num_gpus, "gpu": g.name, "gpu_memory_gib": g.memory_bytes / GIB,
        "weights_gib": round(g.weight_bytes / GIB, 2), "reserved_gib": g.reserved_bytes / GIB,
        "free_kv_gib": round(g.free_kv_bytes / GIB, 2), "kv_bytes_per_token": g.kv.bytes_per_token,
        "memory_fraction": cluster.memory_fraction, "max_model_len": cluster.max_model_len,
        "link_gb_per_s": cluster.link_bytes_per_s / 1e9, "cost_model": asdict(g.cost),
        "num_requests": args.num_requests, "rate_factors": args.rate_factors, "seed": args.seed,
        "min_duration_s": args.min_duration, "mixed_long_share": args.mixed_long_share,
        "systems": {n: _cfg(default_config(n)) for n in ("bucketserve", "distserve", "uellm", "static", "vllm")},
    }


def _cfg(cfg) -> dict:
    d = asdict(cfg)
    return {k: v for k, v in d.items() if v not in (None, False)}


def split_summary(tried: dict) -> str:
    parts = []
    for n, s in sorted(tried.items()):
        cap = s.capacity(0.9)
        parts.append(f"{n}P: {cap['rate'] or 0:.2f} req/s at 90%")
    return ", ".join(parts)


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(report: dict) -> str:
    lines = ["| comparison | paper | ours | BucketServe | baseline | within +-25% |", "| --- | --- | --- | --- | --- | --- |"]
    for c in report["comparisons"]:
        b = c["bounds"]
        note = "" if {b["baseline"], b["bucket"]} <= {"measured", "interpolated", "saturated"} else \
            f" (bounds: {b['bucket']} / {b['baseline']})"
        lines.append(f"| {c['name']} | {c['paper']:g}x | {_f(c['ours'])}x{note} | {_f(c['bucket'])} | {_f(c['baseline'])} | "
                     f"{'yes' if c['within_25pct'] else 'no'} |")
    for wl, res in report["results"].items():
        s = res["workload"]["summary"]
        lines += ["", f"**{wl}**: {s['requests']} requests, prompt mean {s['prompt']['mean']} / median {s['prompt']['median']}, "
                  f"output mean {s['output']['mean']} / median {s['output']['median']}, sources {s['sources']}; "
                  f"DistServe split {res['num_prefill']} prefill + {report['setup']['gpus'] - res['num_prefill']} decode GPUs.", "",
                  "| system | saturated output tok/s | rate at 80% SLO (req/s) | load capacity (req/s) | best goodput (req/s) | GPU util. (saturated) | prefill padding eff. (saturated) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for sys_ in res["systems"]:
            off = next((r for r in sys_["runs"] if r["mode"] == "offline"), None)
            cap, load = sys_["capacity"], sys_["load_capacity"]
            good = max((r["goodput_rps"] for r in sys_["runs"] if r["mode"] == "rate"), default=None)
            lines.append(f"| {sys_['name']} | {_f(off and off['output_tokens_per_s'], '{:.0f}')} | {_bound(cap)} | {_bound(load)} | "
                         f"{_f(good)} | {_f(off and off['gpu_utilization'])} | {_f(off and off['padding_efficiency'])} |")
    if report.get("sensitivity"):
        from .sim_sensitivity import markdown as sens_md

        sens = report["sensitivity"]
        lines += ["", f"Sensitivity ({sens['num_requests']} requests a run, every other rate):", "",
                  sens_md(sens["rows"], {c["name"]: c["paper"] for c in report["comparisons"]})]
    return "\n".join(lines) + "\n"


def _bound(cap: dict) -> str:
    return {"at_least": ">= ", "below": "< ", "saturated": ""}.get(cap["bound"], "") + _f(cap["rate"])


def plots(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for wl, res in report["results"].items():
        systems = res["systems"]
        like = {"systems": systems, "headline": rep.headline(systems), "config": {"target_attainment": report["targets"]["slo_attainment"]},
                "slo": {"slo_ttft_ms": 250.0}}
        for p in rep.plots(like, out / wl):
            paths.append(p)
    comps = [c for c in report["comparisons"] if c["ours"] is not None]
    if comps:
        fig, ax = plt.subplots(figsize=(9, 4.2))
        xs = range(len(comps))
        w = 0.38
        ax.bar([x - w / 2 for x in xs], [c["paper"] for c in comps], w, label="paper", color="tab:grey")
        bars = ax.bar([x + w / 2 for x in xs], [c["ours"] for c in comps], w, label="simulated", color="tab:blue")
        ax.bar_label(bars, fmt="%.2f")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs), [c["name"].replace("_vs_", "\nvs ") for c in comps], fontsize=8)
        ax.set_ylabel("BucketServe / baseline")
        ax.set_title("Paper's headline ratios beside the simulator's")
        ax.legend()
        fig.tight_layout()
        paths.append(out / "comparisons.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
