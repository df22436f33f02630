"""`luodi serve --ray ADDRESS` on a two-node Ray cluster on this machine, with token auth: each
replica lands on the node whose custom resource it asks for, the gateway answers through it, and
the replicas demand a key (they listen on the node's address).

Oracles: the node ids Ray itself reports for each resource, and a replica's answer asked directly
with the gateway's key vs without."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import httpx
import pytest

from luodi.cluster.local import free_port
from model_cache import cache_home, pulled_model_path

pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_spec("ray") is None, reason="needs the ray extra")]
REPO = Path(__file__).resolve().parents[2]

# Two nodes, each with one CPU and its own hardware class; prints the address and each class's node id.
TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "resources": {"cpu-a": 1}, "include_dashboard": False, "object_store_memory": 80 * 2**20})
cluster.add_node(num_cpus=1, resources={"cpu-b": 1}, object_store_memory=80 * 2**20)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="ERROR")
nodes = {key: node["NodeID"] for node in ray.nodes() if node["Alive"] for key in node["Resources"]
         if key.startswith("cpu-")}
ray.shutdown()
print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def test_replicas_land_where_their_resource_is(tmp_path):
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {**os.environ, "PYTHONPATH": str(REPO), "LUODI_TEST_HOME": str(cache_home()), **auth}
    cluster = subprocess.Popen([sys.executable, "-c", TWO_NODES], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=env)
    gateway = None
    try:
        started = json.loads(cluster.stdout.readline())
        port = free_port()
        gateway = subprocess.Popen(
            [sys.executable, "-m", "luodi", "serve", "--model", str(pulled_model_path("smollm2-135m-instruct")),
             "--served-model-name", "smollm2", "--ray", started["address"], "--ray-resource", "cpu-b",
             "--replicas", "1", "--threads-per-replica", "1", "--kv-cache-gb", "0.05", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert gateway.poll() is None, gateway.stderr.read()
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the replica on Ray did not come up"
            time.sleep(1)
        replica = httpx.get(f"{url}/v1/cluster/status", timeout=10).json()["replicas"][0]
        assert replica["node"] == started["nodes"]["cpu-b"] != started["nodes"]["cpu-a"]
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0}).json()
        assert answer["choices"][0]["message"]["content"]
        # The replica listens on the node's address and demands a key: the gateway's, not the caller's.
        direct = httpx.post(f"{replica['url']}/v1/chat/completions", timeout=30, json={
            "model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert direct.status_code == 401
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGINT)
            try:
                gateway.wait(timeout=60)
            except subprocess.TimeoutExpired:
                gateway.kill()
        cluster.stdin.close()
        cluster.wait(timeout=120)
