"""A schemathesis run against the server's OpenAPI schema finds no 5xx response, with generated
requests and with a lone UTF-16 surrogate in every string of every JSON body (schemathesis_hooks.py).

Generation is bounded by a 64-token context window, yet the run sends ~600 requests (a few
minutes on 2 cores), so it is opt-in: set LUODI_FUZZ=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from live_server import make_llm, running_server, service_for

from luodi.kb.store.sqlite import SqliteStore
from luodi.server.kb_service import KnowledgeService

pytestmark = pytest.mark.skipif(not os.environ.get("LUODI_FUZZ"), reason="opt-in (minutes): set LUODI_FUZZ=1")


HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


@pytest.mark.parametrize("surrogates", [False, True], ids=["generated", "lone-surrogates"])
def test_schemathesis_finds_no_server_error(loaded, tmp_path, surrogates):
    """Plain generated requests, then the same with a lone surrogate in every body string: each of
    the latter must be refused as a 400 naming the surrogate (the HAR record shows they reached
    the server), and no request of either run may get a 5xx."""
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(cli).exists():
        pytest.skip("schemathesis is not installed")
    env = dict(os.environ)
    if surrogates:
        env["SCHEMATHESIS_HOOKS"] = HOOKS.stem
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOKS.parent), env.get("PYTHONPATH")]))
    har = tmp_path / "run.har"
    knowledge = KnowledgeService(partial(SqliteStore, tmp_path / "kb"))  # the /v1/kb routes too
    with running_server(service_for(make_llm(loaded, max_model_len=64)), knowledge) as url:
        result = subprocess.run(
            [cli, "run", url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "5",
             "--phases", "coverage,fuzzing", "--request-timeout", "60", "--seed", "1",
             "--report", "har", "--report-har-path", str(har)],
            check=False, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
        )
    assert result.returncode == 0, result.stdout[-4000:]
    if surrogates:
        refused = surrogate_refusals(json.loads(har.read_text())["log"]["entries"])
        assert refused, "no request with a lone surrogate reached the server"


def surrogate_refusals(entries: list[dict]) -> dict[str, int]:
    """Per route, how many JSON requests holding a lone surrogate got a 400 that names it."""
    counts: dict[str, int] = {}
    for entry in entries:
        body = entry["request"].get("postData", {}).get("text", "")
        if "\\ud800" not in body:
            continue
        response = entry["response"]
        assert response["status"] < 500
        if response["status"] == 400 and "surrogate" in response["content"].get("text", ""):
            route = entry["request"]["url"].split("/", 3)[-1]
            counts[route] = counts.get(route, 0) + 1
    return counts
