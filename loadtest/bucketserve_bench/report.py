"""Reports of a bench run: the JSON result file, a markdown table, PNG plots, the ratios."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

GOALS = {
    # baseline: (metric, goal ratio of bucket over it)
    "static": ("offline_output_tokens_per_s", 2.0),
    "uellm": ("rate_at_slo", 2.0),
    "continuous": ("rate_at_slo", 1.3),
    "vllm": ("max_goodput_rps", 1.0),
}
METRIC_LABELS = {
    "offline_output_tokens_per_s": "saturated throughput (output tok/s)",
    "rate_at_slo": "rate at 80% SLO attainment (req/s)",
    "rate_at_slo_all": "rate at 80% SLO attainment, all requests (req/s)",
    "max_goodput_rps": "goodput (req/s within SLO, best rate)",
}


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def headline(systems: list[dict]) -> dict[str, dict]:
    """Per system: the figures the ratios are taken from."""
    out = {}
    for s in systems:
        if s.get("skipped"):
            continue
        rate_runs = [r for r in s["runs"] if r["mode"] == "rate"]
        offline = [r for r in s["runs"] if r["mode"] == "offline"]
        cap = s.get("capacity") or {}
        out[s["name"]] = {
            "rate_at_slo": cap.get("rate"),
            "rate_at_slo_bound": cap.get("bound"),
            "rate_at_slo_all": (s.get("capacity_all") or {}).get("rate"),
            "lowest_rate": min((r["rate"] for r in rate_runs), default=None),
            "max_goodput_rps": max((r["goodput_rps"] for r in rate_runs), default=None),
            "offline_output_tokens_per_s": offline[0]["output_tokens_per_s"] if offline else None,
            "offline_total_tokens_per_s": offline[0]["total_tokens_per_s"] if offline else None,
            "offline_padding_efficiency": offline[0].get("padding_efficiency") if offline else None,
        }
    return out


def ratios(head: dict[str, dict], ours: str = "bucket") -> dict[str, dict]:
    """bucket / each other system, for every headline metric, with the goal where one is set."""
    if ours not in head:
        return {}
    out = {}
    for other, figs in head.items():
        if other == ours:
            continue
        row = {}
        for metric in ("offline_output_tokens_per_s", "rate_at_slo", "rate_at_slo_all", "max_goodput_rps"):
            a, b = head[ours].get(metric), figs.get(metric)
            row[metric] = (a / b) if a is not None and b not in (None, 0) else None
        # The other system missed the target even at the lowest swept rate: its capacity is
        # below that rate, so ours / lowest rate is a safe lower bound on the ratio (the
        # extrapolated ratio above is only a guess).
        if figs.get("rate_at_slo_bound") == "below" and figs.get("lowest_rate") and head[ours].get("rate_at_slo") is not None:
            row["rate_at_slo_at_least"] = head[ours]["rate_at_slo"] / figs["lowest_rate"]
        goal = GOALS.get(other)
        if goal:
            metric, target = goal
            ratio = row[metric]
            if metric == "rate_at_slo" and "rate_at_slo_at_least" in row:
                ratio = row["rate_at_slo_at_least"]
            row["goal"] = {"metric": metric, "target": target, "ratio": ratio, "met": (ratio is not None and ratio >= target)}
        out[other] = row
    return out


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=1, default=str))


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(report: dict) -> str:
    lines = []
    w = report["workload"]
    slo = report["slo"]
    lines.append(f"Workload: {w['summary']['num_requests']} requests ({w['summary']['online']} online, {w['summary']['offline']} offline), "
                 f"traces {', '.join(Path(t).name for t in w['traces'])}; {w['shaping']}; seed {w['seed']}.")
    lines.append(f"SLO: TTFT <= {slo['slo_ttft_ms']:.0f} ms, TPOT <= {slo['slo_tpot_ms']:.1f} ms ({slo.get('how', 'fixed')}).")
    lines.append("")
    lines.append("| system | rate at 80% SLO, online (req/s) | rate at 80% SLO, all (req/s) | best goodput (req/s) | saturated output tok/s | saturated total tok/s | padding efficiency (saturated) |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name, h in report["headline"].items():
        bound = {"at_least": ">= ", "below": "< "}.get(h["rate_at_slo_bound"], "")
        rate = f"{bound}{_f(h['rate_at_slo'])}" if h["rate_at_slo"] is not None else "-"
        lines.append(f"| {name} | {rate} | {_f(h.get('rate_at_slo_all'))} | {_f(h['max_goodput_rps'])} | {_f(h['offline_output_tokens_per_s'], '{:.1f}')} | "
                     f"{_f(h['offline_total_tokens_per_s'], '{:.0f}')} | {_f(h['offline_padding_efficiency'])} |")
    for s in report["systems"]:
        if s.get("skipped"):
            lines.append(f"| {s['name']} | skipped: {s['skipped']} | | | | | |")
    if report.get("ratios"):
        lines.append("")
        lines.append("| bucket / | throughput | rate at 80% SLO, online | rate at 80% SLO, all | goodput | goal |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for other, row in report["ratios"].items():
            goal = row.get("goal")
            g = "-"
            if goal:
                g = f"{METRIC_LABELS[goal['metric']].split(' (')[0]} >= {goal['target']}x: " + ("met" if goal["met"] else f"missed ({_f(goal['ratio'])}x)")
            rate = f"{_f(row['rate_at_slo'])}x"
            if "rate_at_slo_at_least" in row:
                rate = f"> {_f(row['rate_at_slo_at_least'])}x (extrapolated {rate})"
            lines.append(f"| {other} | {_f(row['offline_output_tokens_per_s'])}x | {rate} | {_f(row.get('rate_at_slo_all'))}x | "
                         f"{_f(row['max_goodput_rps'])}x | {g} |")
    lines.append("")
    lines.append("| system | mode | rate | done/sent | SLO attain. (online) | goodput req/s | output tok/s | TTFT p50/p99 ms | TPOT p50/p99 ms | padding eff. |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in report["systems"]:
        for r in s["runs"]:
            lines.append(
                f"| {s['name']} | {r['mode']} | {_f(r['rate'], '{:g}')} | {r['completed']}/{r['num_requests']} | {_f(r['slo_attainment'])} | "
                f"{_f(r['goodput_rps'])} | {_f(r['output_tokens_per_s'], '{:.1f}')} | {_f(r['ttft_ms']['p50'], '{:.0f}')} / {_f(r['ttft_ms']['p99'], '{:.0f}')} | "
                f"{_f(r['tpot_ms']['p50'], '{:.1f}')} / {_f(r['tpot_ms']['p99'], '{:.1f}')} | {_f(r.get('padding_efficiency'))} |"
            )
    return "\n".join(lines) + "\n"


def plots(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    systems = [s for s in report["systems"] if not s.get("skipped")]
    paths = []

    def rate_plot(value, line, xlabel, ylabel, title, name, **axes):
        """One line per system: `value(run)` over the swept rates, a grey line at the target."""
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for s in systems:
            pts = sorted((r["rate"], value(r)) for r in s["runs"] if r["mode"] == "rate" and value(r) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s["name"])
        ax.axhline(line, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title, **axes)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    rate_plot(lambda r: None if r["slo_attainment"] is None else 100 * r["slo_attainment"],
              100 * report["config"]["target_attainment"], "request rate (req/s, Poisson)",
              "SLO attainment of online requests (%)", "SLO attainment vs request rate",
              "slo_attainment_vs_rate.png", ylim=(-2, 102))

    head = report["headline"]
    names = [n for n in head if head[n]["offline_output_tokens_per_s"] is not None]
    if names:
        fig, (ax, gx) = plt.subplots(1, 2, figsize=(10, 4.2))
        vals = [head[n]["offline_output_tokens_per_s"] for n in names]
        bars = ax.bar(names, vals, color="tab:blue")
        ax.bar_label(bars, fmt="%.1f")
        ax.set_ylabel("output tokens/s")
        ax.set_title("Saturated throughput (all requests at t=0)")
        good = [head[n]["max_goodput_rps"] or 0.0 for n in names]
        bars = gx.bar(names, good, color="tab:orange")
        gx.bar_label(bars, fmt="%.2f")
        gx.set_ylabel("requests/s within SLO")
        gx.set_title("Best goodput over the sweep")
        fig.tight_layout()
        paths.append(out_dir / "throughput.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    pad = [(s["name"], r) for s in systems for r in s["runs"] if r.get("padding_efficiency") is not None]
    if pad:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
        markers = "osD^vP*X"
        for i, name in enumerate(dict.fromkeys(n for n, _ in pad)):
            pts = sorted((r["rate"], r["padding_efficiency"]) for n, r in pad if n == name and r["mode"] == "rate")
            if pts:
                left.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker=markers[i % len(markers)],
                          linestyle=["-", "--", "-.", ":"][i % 4], label=name)
        left.set_xlabel("request rate (req/s)")
        left.set_ylabel("useful / computed prefill token slots (%)")
        left.set_ylim(0, 102)
        left.set_title("Padding efficiency per run")
        left.grid(alpha=0.3)
        left.legend()
        sat = [(n, r["padding_efficiency"]) for n, r in pad if r["mode"] == "offline"]
        if sat:
            bars = right.bar([n for n, _ in sat], [100 * v for _, v in sat], color="tab:green")
            right.bar_label(bars, fmt="%.0f%%")
            right.set_ylim(0, 110)
        right.set_title("Saturated run")
        fig.tight_layout()
        paths.append(out_dir / "padding_efficiency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    rate_plot(lambda r: r["ttft_ms"]["p99"], report["slo"]["slo_ttft_ms"], "request rate (req/s)",
              "TTFT p99 (ms)", "Tail time to first token", "ttft_p99_vs_rate.png", yscale="log")
    return paths
