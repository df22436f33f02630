"""`/health` while a first start compiles the native kernels: still "loading" (503), with a detail
that says why the wait is long, and the same words in the server log; then "ok"."""

from __future__ import annotations

import logging
import threading

import httpx
from live_server import MODEL_ID, make_llm, running_server, wait_for

from luodi.kernels import lowbit
from luodi.kernels.native_build import announce_compile
from luodi.server import ModelService, ServerConfig


def test_health_says_the_kernels_are_compiling_then_ok(loaded, caplog):
    compiling, compiled, finish = threading.Event(), threading.Event(), threading.Event()

    def load_that_compiles():
        with announce_compile("native low-bit kernels"):  # what a first-use build announces
            compiling.set()
            compiled.wait(timeout=60)
        finish.wait(timeout=60)
        return make_llm(loaded)

    caplog.set_level(logging.INFO, logger="luodi.server")
    service = ModelService(ServerConfig(model_name=MODEL_ID), load_that_compiles)
    with running_server(service) as url:
        assert compiling.wait(timeout=60)
        health = httpx.get(url + "/health")
        assert health.status_code == 503
        assert health.json() == {"status": "loading", "model": MODEL_ID,
                                 "detail": "compiling native low-bit kernels (first start only)"}
        assert "compiling native low-bit kernels (first start only" in caplog.text
        compiled.set()
        wait_for(lambda: httpx.get(url + "/health").json()["detail"] is None, what="the compile to end")
        assert httpx.get(url + "/health").json()["status"] == "loading"
        finish.set()
        wait_for(lambda: httpx.get(url + "/health").status_code == 200, what="the model to load")
        ready = httpx.get(url + "/health").json()
        assert {k: ready[k] for k in ("status", "model", "detail")} == {"status": "ok", "model": MODEL_ID, "detail": None}
        # Once ready it carries the figures a gateway routes by: a fresh engine, nothing running.
        load = ready["load"]
        assert (load["running"], load["waiting"], load["admitted"]) == (0, 0, 0)
        assert load["kv_blocks_free"] == load["kv_blocks_total"] > 0 and load["step_cost"] is None
        assert load["hardware"].startswith(("cpu-", "cuda:"))
        # and which kernels serve it: on CPU the level in force and each group's path
        kernels = ready["kernels"]
        if load["hardware"].startswith("cpu-"):
            assert kernels["instruction-set level"].split(" ")[0] == load["hardware"].removeprefix("cpu-")
            expected = f"native {lowbit.native_level()}" if lowbit.native_available() else "torch ("
            assert kernels["low-bit linear"].startswith(expected)
            assert set(kernels) == {"instruction-set level", "low-bit linear", "fused ops", "layer stack"}
