"""The engine profile on the tiny model: every request finishes and the phase split adds up."""

from __future__ import annotations

import json

from bucketserve_bench.profile import main


def test_profile_tiny_engine(tmp_path, capsys):
    out = tmp_path / "profile.json"
    rc = main(["--policies", "bucket,static", "--model-dir", "tiny", "--num-requests", "8", "--prompt-scale", "0.05",
               "--output-scale", "0.1", "--max-prompt", "48", "--max-output", "8", "--threads", "1", "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert [r["policy"] for r in results] == ["bucket", "static"]
    bucket, static = results
    assert bucket["one_pass_steps"] >= 1 and bucket["decode_steps"] == 0  # one forward a step
    assert static["prefill_calls"] >= 1 and static["decode_steps"] >= 1 and static["one_pass_steps"] == 0
    for r in results:
        assert 0 < r["prefill_padding_efficiency"] <= 1
        assert sum(r["phases_s"].values()) <= r["wall_s"] * 1.01
        assert r["output_tokens_per_s"] > 0
    out = capsys.readouterr().out
    assert "prefill (model)" in out and "one-pass steps (model)" in out
