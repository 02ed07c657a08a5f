"""`bucketserve-bench sim`: the paper scenario end to end (quick form), and its pure pieces."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bucket_scheduler.core.sim import ClusterSpec, default_config, simulate, build
from bucket_scheduler.core.sim.workload import SimRequestSpec
from bucketserve_bench import cli
from bucketserve_bench.metrics import summarize_run
from bucketserve_bench.sim import PAPER, comparisons
from bucketserve_bench.sim_sweep import to_results

REPO = Path(__file__).resolve().parents[2]
HEADLINE = {"throughput_vs_uellm_mixed": 3.58, "slo_rate_vs_distserve_mixed": 1.93, "load_capacity_vs_uellm_alpaca": 1.975}


def test_quick_paper_scenario_prints_the_comparisons_as_its_last_line(tmp_path):
    out = tmp_path / "sim"
    proc = subprocess.run(
        [sys.executable, "-m", "bucketserve_bench.cli", "sim", "--scenario", "paper", "--quick", "--json", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    by = {c["name"]: c for c in last["comparisons"]}
    assert HEADLINE.items() <= {k: v["paper"] for k, v in by.items()}.items()
    for c in last["comparisons"]:
        assert c["bucket"] > 0 and c["baseline"] > 0, c
        assert math.isclose(c["ours"], c["bucket"] / c["baseline"], rel_tol=1e-3), c
    # BucketServe and UELLM ran the same requests; both throughputs are from saturated runs
    report = json.loads((out / "sim_results.json").read_text())
    for wl in ("alpaca", "mixed"):
        res = report["results"][wl]
        assert 1 <= res["num_prefill"] <= 3
        systems = {s["name"]: s for s in res["systems"]}
        assert set(systems) == {"bucketserve", "distserve", "uellm", "static", "vllm"}
        for s in systems.values():
            for run in s["runs"]:
                assert run["completed"] == run["num_requests"] == 60, (wl, s["name"], run["rate"])
                assert run["slo_attainment"] is None or 0 <= run["slo_attainment"] <= 1
        assert systems["bucketserve"]["num_prefill"] == systems["distserve"]["num_prefill"] == res["num_prefill"]
    assert (out / "comparisons.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "mixed" / "slo_attainment_vs_rate.png").is_file()
    assert "| throughput_vs_uellm_mixed | 3.58x |" in (out / "sim_report.md").read_text()


def test_no_subcommand_still_means_the_serving_sweep(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "--rate-factors" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["sim", "--help"])
    assert "--scenario" in capsys.readouterr().out


def test_simulated_records_summarise_like_served_ones():
    reqs = [SimRequestSpec(0, "alpaca", 0.0, 50, 4, 0.25, 0.1), SimRequestSpec(1, "longbench", 1.0, 4000, 4, 0.25, 0.1)]
    run = simulate(build(default_config("vllm"), ClusterSpec(num_gpus=1)), reqs)
    s = summarize_run("vllm", "rate", 1.0, to_results(run))
    assert s.completed == 2 and s.output_tokens_per_s > 0
    assert s.slo_attainment == 0.5  # the 4000-token prompt cannot make a 250 ms TTFT


def test_comparisons_divide_bucket_by_baseline_and_flag_the_25_percent_band():
    def system(name, tok, cap, sat):
        return {"name": name, "runs": [{"mode": "offline", "output_tokens_per_s": tok}],
                "capacity": {"rate": cap, "bound": "interpolated"}, "load_capacity": {"rate": sat, "bound": "interpolated"}}

    results = {wl: {"systems": [system("bucketserve", 700, 4.0, 6.0), system("uellm", 200, 1.0, 3.0),
                                system("distserve", 500, 2.0, 5.0)]} for wl in ("alpaca", "mixed")}
    by = {c["name"]: c for c in comparisons(results)}
    assert len(by) == len(PAPER)
    assert by["throughput_vs_uellm_mixed"]["ours"] == 3.5 and by["throughput_vs_uellm_mixed"]["within_25pct"]
    assert by["slo_rate_vs_distserve_mixed"]["ours"] == 2.0
    assert by["load_capacity_vs_uellm_alpaca"]["ours"] == 2.0
    assert not by["throughput_vs_distserve_mixed"]["within_25pct"] is False  # 1.4 vs 1.31: inside
    assert not by["load_capacity_vs_uellm_mixed"]["within_25pct"]  # 2.0 vs 3.47


def test_cost_model_fit_recovers_known_coefficients_from_steps():
    """Steps made of the engine's passes (whole-prompt groups, chunk forwards priced by their
    prefix, a decode forward): the fit finds each kind's coefficients."""
    import random

    from bucket_scheduler.core.clock import CostModel
    from bucketserve_bench.sim_fit import StepSample, fit_cost_model, fit_error, predict_ms

    truth = CostModel(prefill=(30.0, 0.5, 2e-4), chunk=(12.0, 0.8, 1e-3), decode_small=(15.0, 0.004, 1.2),
                      decode_switch_bs=1 << 30, padded=True)
    rng = random.Random(0)
    samples = []
    for _ in range(400):
        pre = tuple(rng.randint(4, 512) for _ in range(rng.choice([0, 0, 1, 3, 8])))
        chunks = tuple((rng.choice([0, rng.randint(1, 400)]), rng.randint(1, 256)) for _ in range(rng.choice([0, 0, 1, 2])))
        dec = tuple(rng.randint(4, 600) for _ in range(rng.randint(0 if pre or chunks else 1, 32)))
        s = StepSample(pre, dec, 0.0, chunks=chunks)
        ms = truth.engine_step_ms(s.groups, chunks, dec)
        samples.append(StepSample(pre, dec, (ms + rng.uniform(-0.5, 0.5)) / 1000, chunks=chunks))  # timer-sized noise
    fit = fit_cost_model(samples)
    for got, want in zip(fit.prefill + fit.chunk + fit.decode_small, truth.prefill + truth.chunk + truth.decode_small):
        assert got == pytest.approx(want, rel=0.15)
    assert fit_error(fit, samples)["total_ratio"] == pytest.approx(1.0, abs=0.02)
    assert predict_ms(fit, StepSample((), (), 0.0)) == 0.0
    with pytest.raises(ValueError, match="need decode-only steps and prefill steps"):
        fit_cost_model([s for s in samples if not s.prefills])
    # too few steps with chunks to tell them apart: chunks are priced as prefill
    few = [s for s in samples if not s.chunks] + [s for s in samples if s.chunks][:3]
    assert fit_cost_model(few).chunk is None


def test_cost_model_fit_recovers_one_pass_coefficients_beside_the_three_pass_ones():
    """One-pass steps (chunks, whole prompts among them, and the decode of the batch in one
    forward) fitted apart from three-pass steps in the same sample set: each kind's terms."""
    import random

    from bucket_scheduler.core.clock import CostModel
    from bucketserve_bench.sim_fit import StepSample, fit_cost_model, fit_error, predict_ms

    truth = CostModel(prefill=(30.0, 0.5, 2e-4), chunk=(12.0, 0.8, 1e-3), decode_small=(15.0, 0.004, 1.2),
                      decode_switch_bs=1 << 30, padded=True, mixed=(40.0, 0.3, 1.5, 8e-4, 0.003))
    rng = random.Random(1)
    samples = []
    for i in range(600):
        one = i % 2 == 0
        pre = () if one else tuple(rng.randint(4, 512) for _ in range(rng.choice([0, 0, 1, 3])))
        chunks = tuple((rng.choice([0, 0, rng.randint(1, 400)]), rng.randint(1, 256)) for _ in range(rng.choice([0, 0, 1, 2, 3])))
        dec = tuple(rng.randint(4, 600) for _ in range(rng.randint(0 if pre or chunks else 1, 32)))
        s = StepSample(pre, dec, 0.0, chunks=chunks, mixed=one)
        ms = predict_ms(truth, s)
        samples.append(StepSample(pre, dec, (ms + rng.uniform(-0.5, 0.5)) / 1000, chunks=chunks, mixed=one))
    fit = fit_cost_model(samples)
    for got, want in zip(fit.mixed + fit.prefill + fit.decode_small, truth.mixed + truth.prefill + truth.decode_small):
        assert got == pytest.approx(want, rel=0.15)
    assert fit_error(fit, samples)["total_ratio"] == pytest.approx(1.0, abs=0.02)
    # a one-pass step is priced as one pass, not as the three-pass sum of its parts
    s = StepSample((), (100, 200), 0.0, chunks=((0, 50),), mixed=True)
    assert predict_ms(fit, s) == pytest.approx(fit.mixed_step_ms([(0, 50)], [100, 200]))
    assert predict_ms(fit, s) < fit.engine_step_ms([], [(0, 50)], [100, 200])
    # one-pass steps alone: the one-pass terms are fitted, the three-pass ones are not needed
    only = fit_cost_model([x for x in samples if x.mixed])
    assert only.mixed == pytest.approx(fit.mixed, rel=1e-6)
    with pytest.raises(ValueError, match="one-pass steps with chunks and with decode rows"):
        fit_cost_model([x for x in samples if x.mixed and not x.chunks])


def test_keep_up_is_one_under_light_load_and_falls_under_overload():
    from bucket_scheduler.core.sim import PaperWorkload
    from bucketserve_bench.sim_sweep import keep_up

    one_gpu = ClusterSpec(num_gpus=1)
    wl = PaperWorkload("alpaca", 150, seed=4)
    light = simulate(build(default_config("static"), one_gpu), wl.requests(1.0))
    heavy = simulate(build(default_config("static"), one_gpu), wl.requests(20.0))
    assert keep_up(light) > 0.95
    assert keep_up(heavy) < 0.5


def test_sensitivity_variants_change_only_their_assumption():
    from bucketserve_bench.sim_sensitivity import VARIANTS, configs

    base = configs({})
    by = {name: configs(change) for name, _, change in VARIANTS}
    assert by["as configured"] == base
    assert by["bucket_mode dp"]["bucketserve"].prefill.options["bucket_mode"] == "dp"
    assert base["bucketserve"].prefill.options["bucket_mode"] == "algorithm1"
    assert not by["BucketServe prefill unpadded"]["bucketserve"].prefill_padded and base["bucketserve"].prefill_padded
    assert by["DistServe prefill padded"]["distserve"].prefill_padded and not base["distserve"].prefill_padded
    assert by["UELLM histogram predictor"]["uellm"].colocated.options["predictor"] == "histogram"
    for name in ("bucket_mode dp", "BucketServe prefill unpadded"):
        assert by[name]["distserve"] == base["distserve"] and by[name]["uellm"] == base["uellm"]


def test_cpu_validation_fits_and_replays_the_tiny_engine(tmp_path):
    """The validation pipeline end to end on the tiny model: engine runs timed per step,
    a fit on both clocks, the replay, the report and plots; then a re-analysis from the
    saved measurements gives the same figures."""
    from bucketserve_bench import sim_validate

    out = tmp_path / "cpu"
    args = ["--model-dir", "tiny", "--dtype", "float32", "--num-requests", "5", "--policies", "continuous", "--out", str(out)]
    assert sim_validate.main(args) == 0
    report = json.loads((out / "cpu_validation.json").read_text())
    assert set(report["clocks"]) == {"wall", "cpu"}
    for clock, a in report["clocks"].items():
        (row,) = a["rows"]
        assert row["policy"] == "continuous" and a["fit_steps"] >= 6
        assert row["val"]["measured_tok_s"] > 0 and row["val"]["predicted_tok_s"] > 0
        assert (out / f"cpu_validation_{clock}.png").read_bytes()[:4] == b"\x89PNG"
    # every prompt token of a run is recorded once, in a whole prefill or in a chunk with its prefix
    measured = json.loads((out / "cpu_measured.json").read_text())["policies"]["continuous"]
    # the replay builds its scheduler with the engine's own options: the same budget and chunking
    assert measured["options"]["max_num_batched_tokens"] == 256 and measured["options"]["chunked_prefill"]
    # chunking on, the engine's default mixed step: every step is one pass (runner.step), recorded
    # as its chunks (a whole prompt: prefix 0) and the KV lengths of the rows it decoded
    assert measured["one_pass"]
    for label in ("fit", "val"):
        steps = measured[f"{label}_steps"]
        assert steps and all(x["mixed"] and not x["prefill_lens"] for x in steps)
        recorded = sum(sum(x["prefill_lens"]) + sum(n for _, n in x["chunks"]) for x in steps)
        assert recorded == sum(r["server_prompt_tokens"] for r in measured[label])
        # a token per decoded row a step, plus each prompt's first from its last chunk: the run's tokens
        assert sum(len(x["decode_lens"]) for x in steps) + len(measured[label]) == sum(r["output_tokens"] for r in measured[label])
    assert any(p > 0 for x in measured["fit_steps"] + measured["val_steps"] for p, _ in x["chunks"])  # the budget chunks
    for clock, a in report["clocks"].items():
        assert a["fit_steps_by_kind"] == {"three_pass": 0, "one_pass": a["fit_steps"]}
        assert len(a["cost_model_ms"]["mixed"]) == 5
    again = tmp_path / "again"
    assert sim_validate.main(["--from-measured", str(out / "cpu_measured.json"), "--out", str(again)]) == 0
    redo = json.loads((again / "cpu_validation.json").read_text())
    assert redo["clocks"]["cpu"]["rows"] == report["clocks"]["cpu"]["rows"]


def test_step_samples_switch_clock_and_busy_throughput_counts_cpu_time():
    from bucketserve_bench.sim_fit import StepSample
    from bucketserve_bench.sim_validate import _busy_tok_s
    from bucketserve_bench.metrics import RequestResult

    s = StepSample((10,), (20, 30), 0.5, 0.2)
    assert s.on("wall") is s and s.on("cpu").seconds == 0.2 and s.on("cpu").decode_lens == (20, 30)
    chunked = StepSample((), (20,), 0.5, 0.2, chunks=((0, 256), (256, 40)))
    assert chunked.on("cpu").chunks == ((0, 256), (256, 40)) and chunked.prefills
    one_pass = StepSample((), (20,), 0.5, 0.2, chunks=((0, 30),), mixed=True)
    assert one_pass.on("cpu").mixed and one_pass.on("cpu").seconds == 0.2
    results = [RequestResult(0, False, 10, 4, 0.0, output_tokens=4), RequestResult(1, False, 10, 6, 0.0, output_tokens=6)]
    assert _busy_tok_s(results, [s, StepSample((), (1,), 0.3, 0.3)]) == pytest.approx(10 / 0.5)


def test_measurements_saved_before_chunking_load_with_no_chunks(tmp_path):
    from bucketserve_bench.sim_validate import load_measured

    step = {"prefill_lens": [12, 30], "decode_lens": [40], "seconds": 0.2, "cpu_seconds": 0.1}
    raw = {"continuous": {"options": {}, "fit": [], "val": [], "fit_steps": [step], "val_steps": [], "rates": {}}}
    path = tmp_path / "cpu_measured.json"
    path.write_text(json.dumps(raw))
    measured, kv, _ = load_measured(path)
    (s,) = measured["continuous"]["fit_steps"]
    assert s.chunks == () and s.prefill_lens == (12, 30) and s.on("cpu").seconds == 0.1
    assert not s.mixed and not measured["continuous"]["one_pass"]  # saved before the one-pass step
    assert kv.num_layers == 30
