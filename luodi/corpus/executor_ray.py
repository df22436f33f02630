"""The Ray executor: the local executor's shards through Ray Data `map_batches`, on a local Ray or
on a cluster at an address.

Owns starting or joining Ray (a local Ray with the dashboard off, a bounded object store and
quiet logs; usage statistics always off, so nothing leaves the machine) and feeding shards to
Ray Data. Everything else is the local executor's: the same shards, `clean_shard` run in the Ray
tasks, the same resumable work folder (the driver writes each returned shard, so the nodes need
no shared disk), and the same corpus-wide steps in input order — so the output is
byte-identical to `run_local`'s. Shards go to Ray in windows of a few per worker, which keeps
the driver's and the object store's memory bounded on any corpus size. Knows nothing about the
CLI.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

from luodi.corpus.document import Document
from luodi.corpus.executor import clean_shard, run_sharded
from luodi.corpus.recipe import Recipe
from luodi.corpus.report import FunnelReport
from luodi.errors import LuodiError
from luodi.paths import write_text_atomic
from luodi.progress import Advance

INSTALL_HINT = "pip install 'luodi[ray]'"
OBJECT_STORE_BYTES = 512 * 2**20  # a local Ray's shared-memory store; Ray spills to disk beyond it
SHARDS_PER_WORKER = 4  # shards handed to Ray at a time, per worker: enough to keep every worker busy
CONNECT_TIMEOUT_S = 5.0


class RayExecutorError(LuodiError):
    """Ray is not installed, or the cluster address cannot be reached."""


def run_ray(inputs: list[Path], out: Path, recipe: Recipe, workers: int = 1, address: str | None = None,
            progress: bool = False) -> FunnelReport:
    """Cleans `inputs` into `out` like `run_local`, the shards processed as Ray tasks, at most
    `workers` at a time: on a local Ray of `workers` CPUs, or on the cluster at `address`."""
    def process(todo: Iterator[tuple[list[Document], Path]], advance: Advance) -> None:
        _process_ray(todo, recipe, workers, advance)

    with ray_session(address, workers):
        return run_sharded(inputs, out, recipe, process, progress=progress)


@contextmanager
def ray_session(address: str | None, workers: int) -> Iterator[None]:
    """Ray for the run: one already started in this process as it is; else the cluster at
    `address`, or a new local Ray of `workers` CPUs, shut down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    if address is not None:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:  # e.g. a token the cluster does not accept
            raise RayExecutorError(
                f"cannot join the Ray cluster at {address!r}: {_first_line(e)}; check its address and, "
                "when it uses token auth, RAY_AUTH_MODE and RAY_AUTH_TOKEN") from None
    else:
        ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def import_ray() -> Any:
    """The `ray` module with Ray Data, usage statistics off and Ray Data quiet; an install hint
    when it is missing."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would otherwise report usage over the network
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RayExecutorError(f"--executor ray needs Ray Data, which is not installed ({e}); "
                               f"install it with: {INSTALL_HINT}") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # Luodi's own counter shows progress
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray


def _process_ray(todo: Iterable[tuple[list[Document], Path]], recipe: Recipe, workers: int,
                 advance: Advance) -> None:
    """The shards through `map_batches` (one shard per batch), a window at a time; each returned
    shard is written to its result path here, on the driver."""
    import ray.data

    shards = iter(todo)
    while window := list(islice(shards, SHARDS_PER_WORKER * workers)):
        items = [{"path": str(path), "docs": pickle.dumps(docs)} for docs, path in window]
        results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _clean_batch, fn_kwargs={"recipe": recipe}, batch_size=1, batch_format="numpy", num_cpus=1,
            compute=ray.data.TaskPoolStrategy(size=min(workers, len(items))))
        for row in results.iter_rows():
            write_text_atomic(Path(row["path"]), row["shard"])
            advance(int(row["num_docs"]))


def _clean_batch(batch: dict[str, Any], recipe: Recipe) -> dict[str, list[Any]]:
    """In a Ray task: each shard of the batch through `clean_shard`."""
    paths, shards, num_docs = [], [], []
    for path, data in zip(batch["path"], batch["docs"]):
        docs = pickle.loads(data)  # the driver's own Documents, exactly as the local executor gets them
        paths.append(str(path))
        shards.append(clean_shard(recipe, docs))
        num_docs.append(len(docs))
    return {"path": paths, "shard": shards, "num_docs": num_docs}


def _check_reachable(address: str) -> None:
    """Fails fast on an address nothing listens on (Ray itself would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayExecutorError(f"--ray-address {address!r} is not HOST:PORT; give the head node's address, "
                               "as `ray start --head` prints it (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise RayExecutorError(f"cannot reach a Ray cluster at {address!r} ({e.strerror or e}); start one "
                               "with `ray start --head`, or leave out --ray-address for a local Ray") from None


def _first_line(error: Exception) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
