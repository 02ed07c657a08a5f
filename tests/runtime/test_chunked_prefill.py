"""Chunked prefill on the tiny model: a prompt computed in chunks, while other rows decode
between them, gives the same greedy tokens (fp32 logits within 1e-4) as the prompt computed
whole; a request cancelled or failed mid-chunk gets exactly one final; the engine decodes its
running rows in the very step a newcomer is prefilled."""

from __future__ import annotations

import pytest
import torch

from bucket_scheduler.runtime.runner import Runner

from .helpers import make_seq, random_prompts
from .test_engine import PROMPTS, Collector, make_engine, req

TOL = 1e-4
CHUNKED = {"max_num_batched_tokens": 16, "chunked_prefill": True}


def _alone(model, tok, prompt, max_tokens, fast_path):
    logits = []
    runner = Runner(model, tok, fast_path=fast_path, on_logits=lambda s, row: logits.append(row))
    seq = make_seq(tok, "solo", prompt, max_tokens)
    runner.prefill([seq])
    while not seq.finished:
        runner.decode()
    return seq.output_ids, logits


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_chunked_prefill_gives_the_same_greedy_tokens(tiny, fast_path, chunk):
    model, tok = tiny
    prompts = random_prompts(model.config.vocab_size, 4, seed=chunk, lo=20, hi=90)
    logits: dict[str, list[torch.Tensor]] = {}
    runner = Runner(model, tok, fast_path=fast_path,
                    on_logits=lambda s, row: logits.setdefault(s.request_id, []).append(row))
    neighbour = make_seq(tok, "n", prompts[0][:5], 400)
    runner.prefill([neighbour])  # a row that decodes between the chunks, and widens the window
    seqs = [make_seq(tok, f"c{i}", p, 12) for i, p in enumerate(prompts)]
    for s in seqs:
        start, n = 0, len(s.input_ids)
        while start < n:
            stop = min(n, start + chunk)
            joined = runner.prefill_chunk(s, start, stop)
            assert joined == (stop == n) and (s.request_id in runner.staging) == (stop < n)
            start = stop
            runner.decode()
    while not all(s.finished for s in seqs):
        runner.decode()
    assert not runner.staging
    assert (runner.lean_calls > 0) == fast_path  # the lean step really computed the chunks
    for s, p in zip(seqs, prompts):
        ref_ids, ref_logits = _alone(model, tok, p, 12, fast_path)
        assert s.output_ids == ref_ids
        worst = max(float((a - b).abs().max()) for a, b in zip(logits[s.request_id], ref_logits))
        assert worst < TOL, worst


@pytest.mark.parametrize("chunk", [7, 1000])
def test_one_pass_step_gives_the_same_greedy_tokens(tiny, chunk):
    """Runner.step: every prompt's chunk of the step (a whole prompt when it fits) and the decode
    of the running rows in one forward pass; each sequence's tokens and logits are what it gets
    computed alone."""
    model, tok = tiny
    prompts = random_prompts(model.config.vocab_size, 4, seed=chunk, lo=20, hi=90)
    logits: dict[str, list[torch.Tensor]] = {}
    runner = Runner(model, tok, on_logits=lambda s, row: logits.setdefault(s.request_id, []).append(row))
    assert runner.mixes
    neighbour = make_seq(tok, "n", prompts[0][:5], 400)
    runner.prefill([neighbour])  # a row that decodes in every step
    seqs = [make_seq(tok, f"c{i}", p, 12) for i, p in enumerate(prompts)]
    done = {s.request_id: 0 for s in seqs}
    prompt_len = {s.request_id: len(s.input_ids) for s in seqs}
    passes = 0
    while not all(s.finished for s in seqs):
        chunks = []
        for s in seqs:
            n = prompt_len[s.request_id]
            if done[s.request_id] < n:
                stop = min(n, done[s.request_id] + chunk)
                chunks.append((s, done[s.request_id], stop))
                done[s.request_id] = stop
        last = [c for c, _, stop in chunks if stop == prompt_len[c.request_id]]
        before = runner.lean_calls
        rows = list(runner.rows)
        got = runner.step(chunks)
        passes += 1
        assert runner.lean_calls == before + 1  # one forward for the chunks and the decode
        assert got[: len(rows)] == rows  # every running row decoded in the step
        assert got[len(rows):] == last  # and the prompts whose last chunk this was joined
    assert not runner.staging and len(neighbour.output_ids) == passes + 1
    for s, p in zip(seqs, prompts):
        ref_ids, ref_logits = _alone(model, tok, p, 12, True)
        assert s.output_ids == ref_ids
        worst = max(float((a - b).abs().max()) for a, b in zip(logits[s.request_id], ref_logits))
        assert worst < TOL, worst


def test_engine_with_chunks_answers_as_without():
    prompts = [p * 4 for p in PROMPTS]  # 20-80 tokens: several 16-token chunks each
    texts = {}
    for label, options in (("whole", {"max_num_batched_tokens": None}), ("chunked", CHUNKED)):
        eng = make_engine(policy="bucket", scheduler_options=options).start()
        try:
            sink = Collector()
            for i, p in enumerate(prompts):
                eng.submit(req(f"{label}{i}", p, max_tokens=12, stream=i % 2 == 0), sink)
            sink.wait(len(prompts))
            texts[label] = [sink.final(f"{label}{i}").finish_reason == "length" and sink.text(f"{label}{i}")
                            for i in range(len(prompts))]
            if options.get("chunked_prefill"):
                assert eng.runner.counters.prefill_calls > len(prompts)  # really chunked
        finally:
            eng.shutdown(timeout_s=5)
    assert texts["chunked"] == texts["whole"] and all(texts["whole"])


def test_cancel_mid_chunk_gives_one_final_and_frees_the_staging_kv():
    eng = make_engine(policy="continuous", scheduler_options=CHUNKED)  # stepped by hand
    try:
        sink = Collector()
        eng.submit(req("long", PROMPTS[4] * 3, max_tokens=8, stream=True), sink)
        eng._step()
        assert "long" in eng.runner.staging and eng.runner.kv_bytes() > 0
        assert eng.cancel("long")
        eng._step()
        assert sink.final("long").finish_reason == "cancelled"
        assert not eng.runner.staging and eng.runner.kv_bytes() == 0
        eng._step()
        assert len(sink.outputs["long"]) == 1 and eng.num_in_flight() == 0
    finally:
        eng.shutdown(timeout_s=0)


def test_a_fault_mid_chunk_fails_that_batch_once_and_serving_goes_on():
    eng = make_engine(policy="continuous", scheduler_options=CHUNKED)
    try:
        sink = Collector()
        eng.submit(req("long", PROMPTS[4] * 3, max_tokens=8), sink)
        eng._step()
        eng.runner.fault_hook = lambda phase, seqs: (_ for _ in ()).throw(RuntimeError("injected"))
        eng._step()
        fin = sink.final("long")
        assert fin.finish_reason == "error" and "injected" in fin.error_message
        assert not eng.runner.staging and eng.runner.kv_bytes() == 0
        eng.runner.fault_hook = None
        eng.submit(req("after", PROMPTS[0], max_tokens=4), sink)
        for _ in range(10):
            eng._step()
        assert sink.final("after").finish_reason == "length" and len(sink.outputs["long"]) == 1
    finally:
        eng.shutdown(timeout_s=0)


@pytest.mark.parametrize("options", [{"max_num_batched_tokens": 256}, CHUNKED], ids=["budget", "chunked"])
def test_the_step_decodes_running_rows_in_the_step_a_newcomer_is_prefilled(options):
    eng = make_engine(policy="bucket", scheduler_options=options)
    try:
        sink = Collector()
        eng.submit(req("running", PROMPTS[0], max_tokens=60, stream=True), sink)
        eng._step()
        calls = []
        runner = eng.runner
        for name in ("prefill", "prefill_chunk", "decode", "step"):
            real = getattr(runner, name)
            setattr(runner, name, lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
        eng.submit(req("new", PROMPTS[4] * 2, max_tokens=4), sink)
        running, new = eng._live["running"].seq, eng._live["new"].seq
        steps = 0
        while not new.output_ids and steps < 20:
            before = len(running.output_ids)
            calls.clear()
            eng._step()
            steps += 1
            # one pass for the newcomer's prefill and the batch's decode, or one pass for each
            assert calls == ["step"] or "decode" in calls and any(c.startswith("prefill") for c in calls)
            assert len(running.output_ids) == before + 1  # the running row decoded in this step
        assert new.output_ids
        if options.get("chunked_prefill"):
            assert steps > 1  # the newcomer was prefilled over several steps, the batch decoding in each
    finally:
        eng.shutdown(timeout_s=0)
