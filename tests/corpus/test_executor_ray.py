"""The Ray executor against the local one: byte-identical kept.jsonl, removed.jsonl and report.json
on the same input and recipe, on any number of workers, on a local Ray and on a two-node cluster
joined through `--ray-address`; and its errors, one line each.

One local Ray serves the module's in-process runs (it starts in seconds, not milliseconds)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from importlib.util import find_spec
from itertools import islice
from pathlib import Path

import pytest
from corpus_files import synthetic_corpus, write_jsonl
from corpus_texts import EN
from test_corpus_clean import LABELLED

from luodi.corpus import clean
from luodi.corpus.executor import process_shard, run_sharded
from luodi.corpus.recipe import default_recipe_text, load_recipe
from luodi.errors import LuodiError

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("kept.jsonl", "removed.jsonl", "report.json")
needs_ray = pytest.mark.skipif(find_spec("ray") is None,
                               reason="the Ray executor needs the ray extra: pip install 'luodi[ray]'")

# A two-node Ray on this machine, with token auth and no dashboard: prints its address and node
# count, then holds the cluster until its stdin closes.
TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2**20})
cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="ERROR")
nodes = sum(1 for node in ray.nodes() if node["Alive"])
ray.shutdown()
print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def luodi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True, env=env,
                          timeout=300)


class Stopped(Exception):
    pass


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_outputs(one: Path, other: Path) -> None:
    for name in OUTPUTS:
        assert (one / name).read_bytes() == (other / name).read_bytes(), name


def small_shards(folder: Path, size: int) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(default_recipe_text().replace("shard_size: 1000", f"shard_size: {size}"))
    return recipe


@pytest.fixture(scope="module")
def local_ray():
    from luodi.corpus.executor_ray import ray_session

    with ray_session(None, workers=2):
        yield


@needs_ray
def test_ray_equals_local_on_the_labelled_corpus(tmp_path, local_ray):
    records = [{"id": i, "text": t, "source": "hand"} for i, t, _ in LABELLED]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    with source.open("a", encoding="utf-8") as f:
        f.write('{"id": "broken", "text": \n')
    recipe = small_shards(tmp_path, 3)  # duplicates fall in other shards than their originals
    clean([source], tmp_path / "local", recipe=recipe)
    clean([source], tmp_path / "ray", recipe=recipe, executor="ray", workers=2)
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")
    removed = {r["id"]: (r["stage"], r["reason"]) for r in lines(tmp_path / "ray" / "removed.jsonl")}
    assert removed == {i: label for i, _, label in LABELLED if label is not None}
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["num_shards"] == 3 and len(report["input_errors"]) == 1
    assert not (tmp_path / "ray" / ".work").exists()


@needs_ray
def test_ray_workers_do_not_change_the_output(tmp_path, local_ray):
    source = synthetic_corpus(tmp_path / "in.jsonl", 120)
    recipe = small_shards(tmp_path, 25)
    clean([source], tmp_path / "one", recipe=recipe, executor="ray", workers=1)
    clean([source], tmp_path / "two", recipe=recipe, executor="ray", workers=2)
    clean([source], tmp_path / "local", recipe=recipe, workers=2)
    assert_same_outputs(tmp_path / "one", tmp_path / "two")
    assert_same_outputs(tmp_path / "one", tmp_path / "local")
    assert len(lines(tmp_path / "one" / "kept.jsonl")) > 50


@needs_ray
def test_ray_resumes_the_shards_an_interrupted_run_finished(tmp_path, local_ray):
    source = synthetic_corpus(tmp_path / "in.jsonl", 60, seed=5)
    recipe_path = small_shards(tmp_path, 10)
    clean([source], tmp_path / "whole", recipe=recipe_path)

    def two_shards_then_stop(todo, advance):
        for docs, path in islice(todo, 2):
            process_shard(recipe, docs, path)
        raise Stopped  # as a kill would, after two shards were committed

    recipe = load_recipe(recipe_path).with_languages(("zh", "en")).with_llm_model(None)  # as clean() plans it
    with pytest.raises(Stopped):
        run_sharded([source], tmp_path / "ray", recipe, two_shards_then_stop)
    assert len(list((tmp_path / "ray" / ".work" / "shards").glob("*.json"))) == 2
    clean([source], tmp_path / "ray", recipe=recipe_path, executor="ray", workers=2)
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["num_shards"] == 6 and report["num_resumed_shards"] == 2
    for name in ("kept.jsonl", "removed.jsonl"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name


@needs_ray
def test_cli_on_a_two_node_cluster_equals_local(tmp_path):
    source = synthetic_corpus(tmp_path / "in.jsonl", 60, seed=3)
    recipe = small_shards(tmp_path, 10)
    clean([source], tmp_path / "local", recipe=recipe)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = subprocess.Popen([sys.executable, "-c", TWO_NODES], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO), **auth})
    try:
        started = json.loads(cluster.stdout.readline())
        assert started["nodes"] == 2
        result = luodi("corpus", "clean", str(source), "--recipe", str(recipe), "--out",
                       str(tmp_path / "ray"), "--executor", "ray", "--workers", "2",
                       "--ray-address", started["address"], env=auth)
    finally:
        cluster.stdin.close()
        cluster.wait(timeout=120)
    assert result.returncode == 0, result.stderr
    assert "60 documents read" in result.stdout
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")


@needs_ray
def test_cli_unreachable_address_is_one_line(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": EN}])
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = luodi("corpus", "clean", str(source), "--out", str(tmp_path / "o"), "--executor", "ray",
                   "--ray-address", f"127.0.0.1:{port}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot reach a Ray cluster at '127.0.0.1:{port}'" in result.stderr
    assert "ray start --head" in result.stderr
    bad = luodi("corpus", "clean", str(source), "--out", str(tmp_path / "o"), "--executor", "ray",
                "--ray-address", "head-node")
    assert bad.returncode == 2 and "--ray-address 'head-node' is not HOST:PORT" in bad.stderr


def test_ray_address_needs_the_ray_executor(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": EN}])
    with pytest.raises(LuodiError, match=r"--ray-address '127.0.0.1:6379' needs --executor ray"):
        clean([source], tmp_path / "o", ray_address="127.0.0.1:6379")


def test_cli_without_ray_names_the_extra(tmp_path):
    """Ray made unimportable (as when the extra is not installed): one line with the install hint."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": EN}])
    code = ("import sys; sys.modules['ray'] = None; from luodi.cli.main import main; "
            f"sys.argv = ['luodi', 'corpus', 'clean', {str(source)!r}, '--out', {str(tmp_path / 'o')!r}, "
            "'--executor', 'ray']; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--executor ray needs Ray Data, which is not installed" in result.stderr
    assert "pip install 'luodi[ray]'" in result.stderr
