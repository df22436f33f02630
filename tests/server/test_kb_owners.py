"""Knowledge bases through the real server with several API keys: names scoped per key (two keys
may both have "handbook", and no key learns another's names), ownership by the key's id (a key
removed and re-added under its name owns nothing of the old one's), private files, and lone
surrogates answered with 400, never 500."""

from __future__ import annotations

import stat
from functools import partial

import httpx
import pytest
from live_server import MODEL_ID, make_llm, running_server, service_for

from luodi.kb.store.sqlite import SqliteStore
from luodi.server.auth import add_key, remove_key
from luodi.server.kb_service import KnowledgeService

ALICE_DOC = b"# Leave\n\nAlice's team gets 15 days of annual leave.\n"
BOB_DOC = b"# Travel\n\nBob's team is reimbursed 650 yuan per hotel night.\n"


@pytest.fixture(scope="module")
def server(loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("kb-owners")
    keys = root / "keys.json"
    tokens = {name: add_key(keys, name) for name in ("alice", "bob")}
    service = service_for(make_llm(loaded, max_num_seqs=2), api_keys_file=keys)
    knowledge = KnowledgeService(partial(SqliteStore, root / "kb"))
    with running_server(service, knowledge) as base_url:
        yield base_url, tokens, keys, root / "kb"


def call(server, who: str, method: str, path: str, headers: dict[str, str] | None = None,
         **kwargs) -> httpx.Response:
    base_url, tokens, _, _ = server
    headers = {"Authorization": f"Bearer {tokens[who]}", **(headers or {})}
    return httpx.request(method, base_url + path, headers=headers, timeout=120, **kwargs)


def create(server, who: str, name: str, **kwargs) -> httpx.Response:
    return call(server, who, "POST", "/v1/kb", json={"name": name, "embedder": "minilm"}, **kwargs)


def test_two_keys_may_both_have_a_handbook(server):
    assert create(server, "alice", "handbook").status_code == 201
    assert create(server, "bob", "handbook").status_code == 201  # 409 when names were global
    for who, doc in (("alice", ALICE_DOC), ("bob", BOB_DOC)):
        uploaded = call(server, who, "PUT", f"/v1/kb/handbook/documents/{who}.md", content=doc)
        assert uploaded.status_code == 200, uploaded.text
    for who in ("alice", "bob"):
        described = call(server, who, "GET", "/v1/kb/handbook").json()
        assert [d["source"] for d in described["documents"]] == [f"{who}.md"]
        hits = call(server, who, "POST", "/v1/kb/handbook/search", json={"query": "leave hotel", "k": 5})
        assert {h["source"] for h in hits.json()["data"]} == {f"{who}.md"}
    assert create(server, "bob", "handbook").status_code == 409  # its own name, still taken


def _as_if(response: httpx.Response, name: str) -> tuple[int, str]:
    return response.status_code, response.text.replace(name, "NAME")


def test_another_keys_knowledge_base_looks_exactly_like_none(server):
    assert create(server, "alice", "alices-only").status_code == 201
    call(server, "alice", "PUT", "/v1/kb/alices-only/documents/alice.md", content=ALICE_DOC)
    for method, suffix, kwargs in (
        ("GET", "", {}),
        ("POST", "/search", {"json": {"query": "leave"}}),
        ("PUT", "/documents/x.md", {"content": b"# x\n\nintruder\n"}),
        ("DELETE", "/documents/alice.md", {}),
        ("DELETE", "", {}),
    ):
        theirs = call(server, "bob", method, f"/v1/kb/alices-only{suffix}", **kwargs)
        nobodys = call(server, "bob", method, f"/v1/kb/nobodys-kb{suffix}", **kwargs)
        assert theirs.status_code == 404 and _as_if(theirs, "alices-only") == _as_if(nobodys, "nobodys-kb")
    assert create(server, "bob", "alices-only").status_code == 201  # no 409: bob learns nothing
    assert call(server, "bob", "GET", "/v1/kb/alices-only").json()["documents"] == []
    assert call(server, "alice", "GET", "/v1/kb/alices-only").json()["documents"][0]["source"] == "alice.md"


def test_a_key_readded_under_the_same_name_owns_nothing_of_the_old_one(server):
    base_url, tokens, keys, _ = server
    tokens["carol"] = add_key(keys, "carol")  # the server re-reads the keys file
    assert create(server, "carol", "diary").status_code == 201
    call(server, "carol", "PUT", "/v1/kb/diary/documents/secret.md", content=ALICE_DOC)
    old = tokens["carol"]
    remove_key(keys, "carol")
    tokens["carol"] = add_key(keys, "carol")
    assert httpx.get(base_url + "/v1/kb", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert call(server, "carol", "GET", "/v1/kb").json()["data"] == []
    assert call(server, "carol", "GET", "/v1/kb/diary").status_code == 404
    chat = {"model": MODEL_ID, "kb": "diary", "messages": [{"role": "user", "content": "leave?"}], "max_tokens": 2}
    assert call(server, "carol", "POST", "/v1/chat/completions", json=chat).status_code == 404
    assert create(server, "carol", "diary").status_code == 201
    assert call(server, "carol", "GET", "/v1/kb/diary").json()["documents"] == []


def test_knowledge_base_files_are_private(server):
    _, _, _, root = server
    assert create(server, "alice", "private").status_code == 201
    call(server, "alice", "PUT", "/v1/kb/private/documents/alice.md", content=ALICE_DOC)
    paths = [root, *root.rglob("*")]
    assert any(p.name.endswith("-wal") for p in paths)  # the server holds the files open
    wrong = {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)}
    assert wrong == {}


SURROGATE = b'"\\ud800"'  # a JSON string holding one lone surrogate


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/kb", b'{"name": ' + SURROGATE + b'}'),
    ("POST", "/v1/kb", b'{"name": "ok-name", "embedder": ' + SURROGATE + b'}'),
    ("POST", "/v1/kb/handbook/search", b'{"query": ' + SURROGATE + b'}'),
    ("POST", "/v1/kb/handbook/search", b'{"query": "leave \\udfff days"}'),
    ("POST", "/v1/chat/completions", b'{"model": "' + MODEL_ID.encode() + b'", "kb": "handbook", "max_tokens": 2, '
                                      b'"messages": [{"role": "user", "content": ' + SURROGATE + b'}]}'),
    ("POST", "/v1/chat/completions", b'{"model": "' + MODEL_ID.encode() + b'", "kb": ' + SURROGATE + b', '
                                      b'"max_tokens": 2, "messages": [{"role": "user", "content": "leave?"}]}'),
])
def test_a_lone_surrogate_in_a_json_body_is_400(server, method, path, body):
    assert create(server, "alice", "handbook").status_code in (201, 409)
    response = call(server, "alice", method, path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


# The UTF-8 form of a surrogate (ED A0 80) is not UTF-8: a name or document name sent in the path.
@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/kb/%ED%A0%80", 400),
    ("DELETE", "/v1/kb/%ED%A0%80", 400),
    ("POST", "/v1/kb/%ED%A0%80/search", 400),
    ("PUT", "/v1/kb/%ED%A0%80/documents/a.md", 400),
    ("PUT", "/v1/kb/handbook/documents/%ED%A0%80.md", 400),
    ("DELETE", "/v1/kb/handbook/documents/%ED%A0%80.md", 404),  # a name no document has
])
def test_a_surrogate_in_the_path_is_a_client_error(server, method, path, status):
    create(server, "alice", "handbook")
    kwargs = {"json": {"query": "leave"}} if path.endswith("search") else {"content": b"# x\n\ny\n"}
    response = call(server, "alice", method, path, **({} if method in ("GET", "DELETE") else kwargs))
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
