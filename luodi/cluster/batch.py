"""`luodi batch`: offline inference over a JSONL file, on this machine or on Ray Data, resumable.

Each input line is `{"messages": [...]}` (chat) or `{"prompt": "..."}` (raw text), with an optional
`id` and `max_tokens`; each output line, in input order, is `{"id", "text", "finish_reason",
"prompt_tokens", "completion_tokens"}`. Lines are cut into shards; a shard's requests run
together through one engine (continuous batching does the rest) and its results are written
atomically beside the output (`OUT.parts/`), so a killed run started again skips the shards it
finished. On Ray, shards are Ray Data batches handled by a pool of actors that each load the model
once (`--workers` of them, `--threads` CPUs each); the driver writes every returned shard, so the
nodes need no shared disk. Greedy output is the same local or on Ray.

Bad lines are errors naming the line, found before any model is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError, LuodiError
from luodi.paths import write_text_atomic
from luodi.progress import progress


@dataclass(frozen=True, slots=True)
class BatchOptions:
    model: str
    max_tokens: int = 256
    temperature: float = 0.0
    shard_size: int = 64
    dtype: str | None = None
    device: str = "auto"


def read_requests(path: Path) -> list[dict[str, Any]]:
    """The input lines, checked: each a JSON object with `messages` (a list) or `prompt` (text)."""
    if not path.is_file():
        raise InvalidParameterError(f"{path} is not a file; give a JSONL file of requests", param="input")
    requests = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise InvalidParameterError(f"{path}:{number} is not JSON") from None
            if not isinstance(item, dict) or not (isinstance(item.get("messages"), list)
                                                  or isinstance(item.get("prompt"), str)):
                raise InvalidParameterError(f"{path}:{number} needs \"messages\" (a list) or \"prompt\" (text)")
            requests.append({"id": item.get("id", number), **item})
    if not requests:
        raise InvalidParameterError(f"{path} holds no requests")
    return requests


def run_shard(llm: Any, shard: list[dict[str, Any]], options: BatchOptions) -> str:
    """The shard's requests run together through `llm`'s engine; their output lines, in order."""
    engine = llm.engine
    ids = []
    for item in shard:
        prompt = item["messages"] if "messages" in item else item["prompt"]
        params = SamplingParams(temperature=options.temperature, max_tokens=int(item.get("max_tokens",
                                                                                           options.max_tokens)))
        prompt_ids = llm.prompt_ids(prompt, raw="messages" not in item)
        ids.append((engine.add_request(prompt_ids, params), len(prompt_ids)))
    texts: dict[str, list[str]] = {rid: [] for rid, _ in ids}
    finals: dict[str, Any] = {}
    while engine.has_unfinished:
        for out in engine.step():
            if out.request_id in texts:
                texts[out.request_id].append(out.new_text)
                if out.finished:
                    finals[out.request_id] = out
    lines = []
    for item, (rid, num_prompt) in zip(shard, ids, strict=True):
        final = finals[rid]
        lines.append(json.dumps({"id": item["id"], "text": "".join(texts[rid]), "finish_reason": final.finish_reason,
                                 "prompt_tokens": num_prompt, "completion_tokens": final.num_output_tokens},
                                ensure_ascii=False) + "\n")
    return "".join(lines)


def run_batch(input_path: Path, out: Path, options: BatchOptions, ray_address: str | None = None,
              workers: int = 1, threads: int = 1, show_progress: bool = True) -> dict[str, int]:
    """Every request of `input_path` answered into `out`; returns counts (requests, shards, resumed)."""
    requests = read_requests(input_path)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    shards = [requests[i:i + options.shard_size] for i in range(0, len(requests), options.shard_size)]
    paths = [parts / f"shard-{k:06d}.jsonl" for k in range(len(shards))]
    todo = [(shard, path) for shard, path in zip(shards, paths, strict=True) if not path.exists()]
    with progress("answering", len(requests), enabled=show_progress, unit="requests") as advance:
        advance(len(requests) - sum(len(s) for s, _ in todo))
        if ray_address is None:
            _run_local(todo, options, advance)
        else:
            _run_ray(todo, options, ray_address, workers, threads, advance)
    _concatenate(paths, out)
    shutil.rmtree(parts)
    return {"requests": len(requests), "shards": len(shards), "resumed_shards": len(shards) - len(todo)}


def _load(options: BatchOptions) -> Any:
    from luodi.llm import LLM

    return LLM.load(options.model, device=options.device, dtype=options.dtype)


def _run_local(todo: list[tuple[list[dict], Path]], options: BatchOptions, advance) -> None:
    if not todo:
        return
    llm = _load(options)
    for shard, path in todo:
        write_text_atomic(path, run_shard(llm, shard, options))
        advance(len(shard))


class _ShardWorker:
    """A Ray Data actor: the model loaded once, then shard after shard."""

    def __init__(self, options: BatchOptions) -> None:
        self._options = options
        self._llm = _load(options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        shards = [json.loads(text) for text in batch["shard"]]
        return {"path": list(batch["path"]), "lines": [run_shard(self._llm, s, self._options) for s in shards],
                "count": [len(s) for s in shards]}


def _run_ray(todo: list[tuple[list[dict], Path]], options: BatchOptions, address: str, workers: int,
             threads: int, advance) -> None:
    if not todo:
        return
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        import ray
        import ray.data
    except ImportError:
        raise LuodiError("--ray needs Ray Data: pip install 'luodi[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=None if address == "local" else address, logging_level="ERROR", log_to_driver=False,
                 **({"include_dashboard": False, "num_cpus": workers * threads} if address == "local" else {}))
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [{"path": str(path), "shard": json.dumps(shard, ensure_ascii=False)} for shard, path in todo]
        results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _ShardWorker, fn_constructor_kwargs={"options": options}, batch_size=1, num_cpus=threads,
            concurrency=workers)
        for row in results.iter_rows():
            write_text_atomic(Path(row["path"]), row["lines"])
            advance(int(row["count"]))
    finally:
        if started_here:
            ray.shutdown()


def _concatenate(paths: list[Path], out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for path in paths:
            f.write(path.read_text(encoding="utf-8"))
    tmp.replace(out)
