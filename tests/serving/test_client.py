"""The client package on its own: request fields, prompt files, and that it never needs the backend."""

import subprocess
import sys

import pytest

from bucketserve_client.cli import _read_prompts
from bucketserve_client.client import FIELD_DTYPES, request_fields
from bucket_scheduler.serving.validation import FIELDS


def test_client_fields_are_the_model_inputs():
    assert set(FIELD_DTYPES) | {"text_input"} == set(FIELDS)


def test_request_fields_drop_unset_and_refuse_unknown():
    assert request_fields(True, 8, "online", temperature=None, seed=3) == {"stream": True, "max_tokens": 8, "request_class": "online", "seed": 3}
    with pytest.raises(TypeError, match="unknown option"):
        request_fields(False, max_tokenz=3)


def test_prompt_file_lines_and_jsonl(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text('plain prompt\n\n{"prompt": "json prompt", "max_tokens": 4, "note": "ignored"}\n{"text_input": "t", "request_class": "online"}\n')
    assert _read_prompts(str(f)) == [
        {"prompt": "plain prompt"},
        {"prompt": "json prompt", "max_tokens": 4},
        {"prompt": "t", "request_class": "online"},
    ]


def test_client_imports_without_the_backend():
    code = ("import sys, bucketserve_client, bucketserve_client.cli; "
            "bad = [m for m in sys.modules if m.startswith(('bucket_scheduler', 'torch', 'transformers'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
