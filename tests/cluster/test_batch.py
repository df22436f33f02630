"""`luodi batch`: answers equal the engine's own greedy answers one request at a time, a killed run
resumes after its saved shards, Ray Data gives the same bytes, and bad input is one line.

Oracle: `LLM.complete` per request (batch-invariant kernels: a request's tokens do not depend on
the shard it ran in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from luodi.cluster.batch import BatchOptions, run_batch
from luodi.engine.sampling import SamplingParams
from luodi.llm import LLM
from model_cache import cache_home, pulled_model_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("batch_invariant_kernels")]
REPO = Path(__file__).resolve().parents[2]
REQUESTS = [
    {"id": "hello", "messages": [{"role": "user", "content": "Say hello."}]},
    {"prompt": "The capital of France is", "max_tokens": 6},
    {"messages": [{"role": "user", "content": "请介绍一下长城。"}]},
    {"id": 7, "messages": [{"role": "system", "content": "Answer in one word."},
                           {"role": "user", "content": "What color is the sky?"}]},
    {"prompt": "1, 2, 3, 4,"},
]


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(pulled_model_path("smollm2-135m-instruct"))


@pytest.fixture()
def requests_file(tmp_path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in REQUESTS), encoding="utf-8")
    return path


def test_answers_equal_the_engine_alone_and_a_run_resumes(model_path, requests_file, tmp_path):
    options = BatchOptions(model_path, max_tokens=12, shard_size=2, device="cpu")
    out = tmp_path / "out.jsonl"
    counts = run_batch(requests_file, out, options, show_progress=False)
    assert counts == {"requests": 5, "shards": 3, "resumed_shards": 0}
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    llm = LLM.load(model_path, device="cpu")
    for request, line, number in zip(REQUESTS, lines, range(1, 6), strict=True):
        prompt = llm.prompt_ids(request["messages"] if "messages" in request else request["prompt"],
                                raw="messages" not in request)
        alone = llm.complete(prompt, SamplingParams(temperature=0, max_tokens=request.get("max_tokens", 12)))
        assert line["id"] == request.get("id", number)
        assert (line["text"], line["completion_tokens"], line["prompt_tokens"]) == \
            (alone.text, len(alone.token_ids), len(prompt))
    # A run killed after its first shard: that shard is kept as saved, the rest computed.
    parts = tmp_path / "again.jsonl.parts"
    parts.mkdir()
    saved = '{"id": "saved"}\n{"id": "saved too"}\n'
    (parts / "shard-000000.jsonl").write_text(saved, encoding="utf-8")
    counts = run_batch(requests_file, tmp_path / "again.jsonl", options, show_progress=False)
    again = (tmp_path / "again.jsonl").read_text(encoding="utf-8")
    assert counts["resumed_shards"] == 1 and again.startswith(saved)
    assert again[len(saved):] == "".join(line + "\n" for line in out.read_text(encoding="utf-8").splitlines()[2:])
    assert not parts.exists()


@pytest.mark.skipif(find_spec("ray") is None, reason="needs the ray extra")
def test_cli_on_ray_data_equals_local(model_path, requests_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "LUODI_TEST_HOME": str(cache_home()), "RAY_USAGE_STATS_ENABLED": "0"}
    run_batch(requests_file, tmp_path / "local.jsonl", BatchOptions(model_path, max_tokens=12, shard_size=2,
                                                                     device="cpu"), show_progress=False)
    on_ray = subprocess.run([sys.executable, "-m", "luodi", "batch", str(requests_file), "-m", model_path, "-n", "12",
                             "--shard-size", "2", "--device", "cpu", "--out", str(tmp_path / "ray.jsonl"),
                             "--ray", "local"], env=env, capture_output=True, text=True, timeout=600)
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]
    assert "5 answers written" in on_ray.stderr
    assert (tmp_path / "local.jsonl").read_bytes() == (tmp_path / "ray.jsonl").read_bytes()


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n{"text": "no prompt"}\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "luodi", "batch", str(bad), "--out", str(tmp_path / "o.jsonl")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert 'bad.jsonl:2 needs "messages" (a list) or "prompt" (text)' in result.stderr
