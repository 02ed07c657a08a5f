"""batch_invariant=true, from outside: greedy answers of the default model are the same alone
and among concurrent streams (on the bf16 default some differ: README, "Settings")."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from bucket_scheduler.serving.launcher import ServerOptions, start_server
from bucketserve_client import GrpcClient


PROMPTS = [f"Write one sentence about the number {i} and the weather" + ", please" * (i % 5) for i in range(24)]


@pytest.fixture(scope="module")
def invariant_server(tmp_path_factory):
    handle = start_server(ServerOptions(models=["bucketserve"], host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0,
                                        overrides={"bucketserve": {"batch_invariant": "true", "max_model_len": "256"}},
                                        run_dir=tmp_path_factory.mktemp("invariant-run"), exit_timeout_s=10, ready_timeout_s=600))
    try:
        yield handle
    finally:
        handle.stop()


def _check(handle, alone_n: int, crowd: int, max_tokens: int) -> None:
    client = GrpcClient(handle.grpc_url, "bucketserve")
    alone = [client.generate(p, max_tokens=max_tokens, ignore_eos=True).text for p in PROMPTS[:alone_n]]
    with ThreadPoolExecutor(crowd) as pool:
        results = list(pool.map(lambda p: client.generate(p, stream=True, max_tokens=max_tokens, ignore_eos=True),
                                PROMPTS[:crowd]))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert [r.text for r in results[:alone_n]] == alone


def test_greedy_answers_do_not_depend_on_the_batch(invariant_server):
    _check(invariant_server, alone_n=3, crowd=6, max_tokens=8)


@pytest.mark.slow
def test_greedy_answers_do_not_depend_on_the_batch_24_streams(invariant_server):
    _check(invariant_server, alone_n=8, crowd=24, max_tokens=48)
