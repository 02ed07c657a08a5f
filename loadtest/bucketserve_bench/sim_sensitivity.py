"""Which assumption moves each headline ratio, and by how much.

Each variant changes one assumption of the paper scenario and recomputes the six
comparisons (BucketServe, DistServe and UELLM on both workloads, DistServe's split as
found by the main run) at a lighter setting: every other swept rate, fewer requests.
The "as configured" row is the same light setting without a change, so each variant is
compared with it, not with the full run.
"""

from __future__ import annotations

from dataclasses import replace

from bucket_scheduler.core.sim import ClusterSpec, PaperWorkload, default_config

from .sim_sweep import sweep

VARIANTS = [
    ("as configured", "the main run's assumptions, at the light setting", {}),
    ("bucket_mode dp", "BucketServe's buckets from the core's dp boundaries (Eq. 4 solved exactly) instead of Algorithm 1",
     {"bucket_options": {"bucket_mode": "dp"}}),
    ("BucketServe prefill unpadded", "BucketServe's prefill computes only real tokens, as DistServe's (a varlen/paged kernel)",
     {"bucket_unpadded": True}),
    ("DistServe prefill padded", "DistServe's prefill batches are padded to their longest prompt, as BucketServe's",
     {"distserve_padded": True}),
    ("UELLM histogram predictor", "UELLM predicts output lengths from finished requests instead of knowing them",
     {"uellm_options": {"predictor": "histogram"}}),
    ("Mixed: half LongBench", "the Mixed set holds 50% LongBench requests instead of 20%", {"mixed_long_share": 0.5}),
]


def configs(change: dict) -> dict:
    b = default_config("bucketserve", change.get("bucket_options"))
    if change.get("bucket_unpadded"):
        b = replace(b, prefill_padded=False, prefill=replace(b.prefill, accounting="per_request"))
    d = default_config("distserve")
    if change.get("distserve_padded"):
        d = replace(d, prefill_padded=True, prefill=replace(d.prefill, accounting="padded"))
    u = default_config("uellm")
    if change.get("uellm_options"):
        u = replace(u, colocated=replace(u.colocated, options={**u.colocated.options, **change["uellm_options"]}))
    return {"bucketserve": b, "distserve": d, "uellm": u}


def run(cluster: ClusterSpec, main_results: dict, num_requests: int, seed: int, mixed_long_share: float,
        min_duration_s: float, log) -> list[dict]:
    from .sim import comparisons  # the same ratio arithmetic as the main table

    rows = []
    for name, what, change in VARIANTS:
        cfgs = configs(change)
        results = {}
        for wl_name, main in main_results.items():
            wl = PaperWorkload(wl_name, num_requests, cluster.max_model_len, change.get("mixed_long_share", mixed_long_share), seed)
            rates = main["rates"][::2]
            n = main["num_prefill"]
            systems = []
            for sys_name, cfg in cfgs.items():
                s = sweep(cfg, cluster, wl, rates, n if sys_name in ("bucketserve", "distserve") else None,
                          min_duration_s=min_duration_s)
                systems.append(s.as_report_system())
            results[wl_name] = {"systems": systems}
        comps = comparisons(results)
        rows.append({"variant": name, "what": what, "comparisons": {c["name"]: c["ours"] for c in comps}})
        log(f"[sim] sensitivity {name}: " + ", ".join(f"{c['name']} {c['ours']}" for c in comps))
    return rows


def markdown(rows: list[dict], paper: dict[str, float]) -> str:
    names = list(paper)
    lines = ["| variant | " + " | ".join(n.replace("_", " ") for n in names) + " |",
             "| --- | " + " | ".join("---" for _ in names) + " |",
             "| paper | " + " | ".join(f"{paper[n]:g}x" for n in names) + " |"]
    for r in rows:
        vals = [r["comparisons"].get(n) for n in names]
        lines.append(f"| {r['variant']} | " + " | ".join("-" if v is None else f"{v:.2f}x" for v in vals) + " |")
    lines.append("")
    lines += [f"- **{r['variant']}**: {r['what']}." for r in rows]
    return "\n".join(lines) + "\n"
