"""Choices: one API request fanned out into engine requests (`n` samples, a list of prompts).

Owns the numbering of choices (OpenAI's: prompt i's sample j is choice i * n + j), the seed each
sample draws from (vLLM's rule: sample j of a seeded request uses seed + j, so sample 0 equals the
same request with n = 1), the admission of every choice, and one merged stream of
`(choice index, RequestOutput)` for the routes to shape into JSON.

A prompt is computed once for its n samples: sample 0 starts first, and the others are started
once it has produced its first token, when its prompt's full KV blocks are in the prefix cache;
the siblings then reuse those blocks and compute only the prompt's last partial block.

Must not know the OpenAI wire format or how the engine schedules: it calls `ModelService`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from luodi.engine.engine import RequestOutput
from luodi.engine.sampling import SamplingParams
from luodi.server.service import Admission, ModelService


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    echo: str = ""  # completions with echo: the prompt's text, sent before the answer
    resume_ids: tuple[int, ...] = ()  # output another replica already sent (one prompt, n = 1)


def plan(prompts: list[list[int]], params: SamplingParams, n: int, echoes: list[str] | None = None,
         resume_ids: list[int] | None = None) -> list[Choice]:
    """Choice i * n + j is sample j of prompt i."""
    echoes = echoes or [""] * len(prompts)
    resume = tuple(resume_ids or ())
    return [Choice(i * n + j, ids, sample_params(params, j), echo, resume)
            for i, (ids, echo) in enumerate(zip(prompts, echoes, strict=True)) for j in range(n)]


def sample_params(params: SamplingParams, j: int) -> SamplingParams:
    """Sample j's params: a seeded request's samples draw from seed + j (as vLLM)."""
    if j == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + j)


class Admissions:
    """Every choice's place in the server; `release` frees those not yet released (idempotent)."""

    def __init__(self, service: ModelService, count: int) -> None:
        self.items: list[Admission] = []
        try:
            for _ in range(count):
                self.items.append(service.admit())
        except Exception:
            self.release()
            raise

    def release(self) -> None:
        for admission in self.items:
            admission.release()


async def merged(
    service: ModelService, admissions: Admissions, choices: list[Choice], adapter: str | None,
    cache_salt: str | None,
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Every choice's outputs as they come, tagged with its index. Closing this generator (a client
    gone) cancels every choice, which aborts its engine request."""
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()
    tasks: list[asyncio.Task] = []

    async def pump(k: int, choice: Choice, first_out: asyncio.Event | None) -> None:
        outputs = service.generate(admissions.items[k], choice.prompt_ids, choice.params, adapter, cache_salt,
                                   choice.resume_ids)
        try:
            async with aclosing(outputs):
                async for out in outputs:
                    if first_out is not None:
                        first_out.set()
                    queue.put_nowait((choice.index, out))
        except Exception as exc:  # noqa: BLE001 -- handed to the consumer, which raises it
            queue.put_nowait((choice.index, exc))
        finally:
            if first_out is not None:
                first_out.set()  # a sample 0 that failed or was aborted still lets its siblings run
            queue.put_nowait((choice.index, None))

    async def siblings_after(first_out: asyncio.Event, group: list[tuple[int, Choice]]) -> None:
        await first_out.wait()
        tasks.extend(asyncio.ensure_future(pump(k, c, None)) for k, c in group)

    for group in _by_prompt(choices):
        first_out = asyncio.Event()
        (k0, c0), rest = group[0], group[1:]
        tasks.append(asyncio.ensure_future(pump(k0, c0, first_out if rest else None)))
        if rest:
            tasks.append(asyncio.ensure_future(siblings_after(first_out, rest)))
    try:
        for _ in range(len(choices)):
            while (item := await queue.get())[1] is not None:
                if isinstance(item[1], BaseException):
                    raise item[1]
                yield item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        admissions.release()


def _by_prompt(choices: list[Choice]) -> list[list[tuple[int, Choice]]]:
    """(position, choice) grouped by prompt, in order: consecutive choices that share prompt ids."""
    groups: list[list[tuple[int, Choice]]] = []
    for k, choice in enumerate(choices):
        if groups and groups[-1][0][1].prompt_ids is choice.prompt_ids:
            groups[-1].append((k, choice))
        else:
            groups.append([(k, choice)])
    return groups


async def collect(outputs: AsyncIterator[tuple[int, RequestOutput]], num_choices: int) -> list[list[RequestOutput]]:
    """Each choice's outputs, by index."""
    per_choice: list[list[RequestOutput]] = [[] for _ in range(num_choices)]
    async for index, out in outputs:
        per_choice[index].append(out)
    return per_choice
