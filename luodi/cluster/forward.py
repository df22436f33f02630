"""One generation request carried to replicas and back, surviving a replica that dies.

Owns failover. A request goes to the replica the router picks; if that replica cannot be reached
or fails (a 5xx, a connection dropped), it is marked down and the request goes to the next pick.
A stream that has already sent text resumes on the next replica from the tokens sent so far: the
gateway always asks replicas for each chunk's token ids (`return_token_ids`) and, on failover,
sends them back as `resume_token_ids`; the new replica recomputes prompt + those tokens and
continues (greedy output identical: `LLMEngine.add_request`). The client sees one stream: its id,
its creation time, no second role chunk, token ids only if it asked for them.

What cannot resume — several choices (`n` > 1), tool calls, knowledge-base answers — is retried
from the start only while nothing was sent; after that the stream ends with an error event.

Must not know routing policy: it is handed a `pick` function.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from luodi.cluster.replicas import Replica

Pick = Callable[[frozenset[str]], Awaitable[Replica | None]]
Release = Callable[[Replica, bool], None]  # (replica, succeeded)
_TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=60.0)
_REPLICA_FAILED = (500, 502, 503, 504)  # the replica, not the request: try another


class NoReplicaError(Exception):
    """Every replica was tried (or none is up)."""


@dataclass(slots=True)
class StreamState:
    """What the client has been sent of choice 0 so far."""

    client_wants_ids: bool
    resumable: bool
    num_choices: int = 1
    sent_ids: list[int] = field(default_factory=list)
    sent_anything: bool = False
    stream_id: str | None = None
    created: int | None = None
    num_finished: int = 0
    errored: bool = False  # a replica sent an error event: the stream ends there, as it would alone

    @property
    def finished(self) -> bool:
        return self.errored or self.num_finished >= self.num_choices


def num_choices(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    n = body.get("n") or 1
    return prompts * n if isinstance(n, int) else prompts


def is_resumable(body: dict[str, Any]) -> bool:
    """One choice of plain text: what `resume_token_ids` can continue."""
    return num_choices(body) == 1 and not body.get("tools") and not body.get("kb") and not body.get("echo")


def forwarded_headers(headers: dict[str, str], replica_key: str | None = None) -> dict[str, str]:
    """The client's headers a replica needs; `replica_key` stands in for a client that sent no key
    (a key-less gateway over replicas that demand one)."""
    keep = ("authorization", "content-type", "accept-language", "x-request-id")
    kept = {k: v for k, v in headers.items() if k.lower() in keep}
    if replica_key and not any(k.lower() == "authorization" for k in kept):
        kept["authorization"] = f"Bearer {replica_key}"
    return kept


async def send_once(client: httpx.AsyncClient, pick: Pick, release: Release, path: str,
                    body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """A non-streamed request: the first replica that answers it (a 4xx is an answer)."""
    tried: set[str] = set()
    while True:
        replica = await pick(frozenset(tried))
        if replica is None:
            raise NoReplicaError("no replica could take the request")
        try:
            response = await client.post(f"{replica.url}{path}", json=body, headers=headers, timeout=_TIMEOUT)
        except httpx.TransportError as exc:
            replica.mark_down(f"{path} failed: {type(exc).__name__}")
            response = None
        failed = response is None or response.status_code in _REPLICA_FAILED
        release(replica, not failed)
        if not failed:
            return response
        tried.add(replica.id)


async def open_stream(client: httpx.AsyncClient, pick: Pick, release: Release, path: str,
                      body: dict[str, Any], headers: dict[str, str], tried: set[str]
                      ) -> tuple[Replica, httpx.Response]:
    """The first replica that starts a 200 stream, or its error response (4xx) to pass on."""
    while True:
        replica = await pick(frozenset(tried))
        if replica is None:
            raise NoReplicaError("no replica could take the request")
        try:
            request = client.build_request("POST", f"{replica.url}{path}", json=body, headers=headers,
                                           timeout=_TIMEOUT)
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            replica.mark_down(f"{path} failed: {type(exc).__name__}")
            release(replica, False)
            tried.add(replica.id)
            continue
        if response.status_code in _REPLICA_FAILED:
            await response.aclose()
            release(replica, False)
            tried.add(replica.id)
            continue
        return replica, response


async def relay(client: httpx.AsyncClient, pick: Pick, release: Release, path: str, body: dict[str, Any],
                headers: dict[str, str], first: tuple[Replica, httpx.Response], state: StreamState,
                tried: set[str]) -> AsyncIterator[str]:
    """SSE `data:` payloads for the client, from `first` and, after a failure, its successors."""
    replica, response = first
    while True:
        done = broke = False
        try:
            async for payload in _payloads(response):
                if payload == "[DONE]":
                    done = True
                    break
                out = _rewrite(payload, state)
                if out is not None:
                    yield out
            broke = not done and not state.finished
        except httpx.TransportError:
            broke = not state.finished
        finally:  # also when the client leaves (the generator is closed): the replica's count drops
            await response.aclose()
            release(replica, not broke)
        if not broke:
            yield "[DONE]"
            return
        replica.mark_down(f"the stream of {path} broke off")
        tried.add(replica.id)
        if state.sent_anything and not state.resumable:
            yield _error("the replica serving this stream failed and a stream of this kind cannot be resumed; "
                         "send the request again")
            return
        retry = {**body, "resume_token_ids": list(state.sent_ids)} if state.sent_ids else body
        try:
            replica, response = await open_stream(client, pick, release, path, retry, headers, tried)
        except Exception as exc:  # noqa: BLE001 -- none left, or none within the target: say so in the stream
            reason = str(exc) if not isinstance(exc, NoReplicaError) else "no other replica could continue it"
            yield _error(f"the replica serving this stream failed and {reason}")
            return
        if response.status_code != 200:
            yield _error(f"the replica continuing this stream refused it ({response.status_code})")
            await response.aclose()
            release(replica, False)
            return


async def _payloads(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def _rewrite(payload: str, state: StreamState) -> str | None:
    """The chunk as the client should see it; None to drop it (a resumed stream's role chunk)."""
    try:
        chunk = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(chunk, dict) and "error" in chunk:
        state.errored = True
    if not isinstance(chunk, dict) or "error" in chunk:
        return payload
    if state.stream_id is None:
        state.stream_id, state.created = chunk.get("id"), chunk.get("created")
    else:
        chunk["id"], chunk["created"] = state.stream_id, state.created
    choices = chunk.get("choices") or []
    if state.sent_anything and _is_role_chunk(choices):
        return None
    for choice in choices:
        ids = choice.pop("token_ids", None) if not state.client_wants_ids else choice.get("token_ids")
        if choice.get("index", 0) == 0 and ids:
            state.sent_ids.extend(ids)
        if choice.get("finish_reason") is not None:
            state.num_finished += 1
    state.sent_anything = True
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


def _is_role_chunk(choices: list[dict[str, Any]]) -> bool:
    return len(choices) == 1 and choices[0].get("delta", {}).get("role") is not None \
        and not choices[0]["delta"].get("content") and choices[0].get("finish_reason") is None


def _error(message: str) -> str:
    return json.dumps({"error": {"message": message, "type": "service_unavailable", "param": None,
                                 "code": "replica_failed"}})
