"""`KnowledgeService.run`: store and embedder calls off the event loop, side by side, each in a
thread that ends with the call (a long-lived thread that ran torch ops would keep an OpenMP pool
that throttles the engine thread's)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from luodi.server.kb_service import KnowledgeService


def _kb_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "luodi-kb"]


def _wait_until_gone(deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while _kb_threads() and time.monotonic() < end:
        time.sleep(0.01)


def test_each_call_runs_in_a_thread_that_ends_with_it():
    service = KnowledgeService(open_store=lambda: None)

    def torch_work() -> tuple[str, float]:
        return threading.current_thread().name, float(torch.ones(1 << 18).sum())

    name, total = asyncio.run(service.run(torch_work))
    assert (name, total) == ("luodi-kb", float(1 << 18))
    _wait_until_gone()
    assert _kb_threads() == []


def test_calls_run_side_by_side_and_errors_reach_the_caller():
    """No call waits for another (the stores lock what they share): four calls that each wait for
    all four to be running at once all return."""
    service = KnowledgeService(open_store=lambda: None)
    all_running = threading.Barrier(4, timeout=60)  # broken (an error) if the calls were serialized

    def meet(i: int) -> int:
        all_running.wait()
        return i

    def broken() -> None:
        raise ValueError("no such knowledge base")

    async def main() -> list[int]:
        results = await asyncio.gather(*(service.run(meet, i) for i in range(4)))
        with pytest.raises(ValueError, match="no such knowledge base"):
            await service.run(broken)
        return list(results)

    assert asyncio.run(main()) == [0, 1, 2, 3]
