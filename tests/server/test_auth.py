"""API keys: stored only as salted hashes, shown once, enforced on every route but /health (and the
web page's static files), re-read when the file changes; and `serve` refusing an open network bind."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

import httpx
import openai
import pytest
import typer
from live_server import MODEL_ID, make_llm, running_server, service_for
from typer.testing import CliRunner

from luodi.cli.serve import InsecureBindError, is_loopback, keys_app, resolve_keys_file, serve
from luodi.kb.store.base import LOCAL_OWNER
from luodi.server.auth import KeyFileError, KeyStore, add_key, bearer_token, read_keys, remove_key

# -- the keys file ----------------------------------------------------------------------------------


def test_a_key_is_stored_only_as_a_salted_hash(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "ci")
    text = path.read_text()
    assert key.startswith("luodi-") and len(key) > 40
    assert key not in text and key[10:] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (stored,) = read_keys(path)
    assert stored.name == "ci" and stored.matches(key) and not stored.matches(key + "x")
    # Two keys never share a salt, so equal hashes cannot reveal equal keys.
    add_key(path, "app")
    assert len({k.salt for k in read_keys(path)}) == 2


def test_keystore_verifies_and_follows_the_file(tmp_path):
    path = tmp_path / "keys.json"
    first = add_key(path, "first")
    store = KeyStore.open(path)
    assert store.verify(first) == "first" and store.verify("luodi-wrong") is None
    second = add_key(path, "second")  # added while a server runs
    assert store.verify(second) == "second"
    remove_key(path, "first")
    assert store.verify(first) is None and store.names == ["second"]


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "-leading"])
def test_bad_key_names_are_refused(tmp_path, name):
    with pytest.raises(KeyFileError, match="key name"):
        add_key(tmp_path / "keys.json", name)


def test_duplicate_name_missing_file_and_unknown_key(tmp_path):
    path = tmp_path / "keys.json"
    add_key(path, "ci")
    with pytest.raises(KeyFileError, match="already exists"):
        add_key(path, "ci")
    with pytest.raises(KeyFileError, match="no key named 'other'"):
        remove_key(path, "other")
    with pytest.raises(KeyFileError, match="does not exist"):
        KeyStore.open(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(KeyFileError, match="cannot read"):
        read_keys(tmp_path / "broken.json")


def test_a_key_id_is_random_and_never_inherited_by_a_new_key_of_the_same_name(tmp_path):
    path = tmp_path / "keys.json"
    first = add_key(path, "alice")
    (old,) = read_keys(path)
    remove_key(path, "alice")
    second = add_key(path, "alice")
    (new,) = read_keys(path)
    assert old.id != new.id and LOCAL_OWNER not in (old.id, new.id) and old.name not in (old.id, new.id)
    assert json.loads(path.read_text())["keys"][0]["id"] == new.id
    store = KeyStore.open(path)
    assert store.identify(first) is None and store.identify(second) == new


@pytest.mark.parametrize("name", [LOCAL_OWNER, LOCAL_OWNER.upper()])
def test_the_local_owner_is_not_a_key_name(tmp_path, name):
    with pytest.raises(KeyFileError, match="reserved"):
        add_key(tmp_path / "keys.json", name)
    assert not (tmp_path / "keys.json").exists()


def test_keys_add_local_is_a_one_line_error(tmp_path):
    path = tmp_path / "keys.json"
    result = subprocess.run([sys.executable, "-m", "luodi", "keys", "add", LOCAL_OWNER, "--file", str(path)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "LUODI_HOME": str(tmp_path)})
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "error: key name 'local' is reserved: 'local' owns what the CLI makes; pick another name"]
    assert not path.exists()


def _legacy_entry(name: str, key: str) -> dict[str, object]:
    """A key as the keys file held it before keys had ids."""
    salt = bytes(range(16)) if name == "alice" else bytes(range(16, 32))
    return {"name": name, "salt": salt.hex(), "sha256": hashlib.sha256(salt + key.encode()).hexdigest(),
            "hint": key[:10], "created": 1700000000}


def test_a_keys_file_without_ids_still_loads_with_stable_ids(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"version": 1, "keys": [_legacy_entry("alice", "luodi-a"),
                                                         _legacy_entry(LOCAL_OWNER, "luodi-l")]}))
    first, again = read_keys(path), read_keys(path)
    assert [k.id for k in first] == [k.id for k in again]
    alice, local = first
    assert alice.id == "alice"  # the owner its knowledge bases were made under: they stay its own
    assert local.id != LOCAL_OWNER and local.id.startswith("key-")  # never the CLI's knowledge bases
    assert KeyStore.open(path).identify("luodi-l") == local
    add_key(path, "bob")  # a rewrite keeps the ids it gave
    assert [(e["name"], e["id"]) for e in json.loads(path.read_text())["keys"][:2]] == [
        ("alice", alice.id), (LOCAL_OWNER, local.id)]
    assert read_keys(path)[:2] == first


def test_a_keys_file_giving_a_key_the_local_owners_id_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"version": 2, "keys": [{**_legacy_entry("alice", "luodi-a"), "id": LOCAL_OWNER}]}))
    with pytest.raises(KeyFileError, match="key ids must be distinct"):
        read_keys(path)


def test_bearer_token_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


# -- the CLI ------------------------------------------------------------------------------------------


def cli() -> typer.Typer:
    """The commands as `luodi` registers them."""
    app = typer.Typer()
    app.command()(serve)
    app.add_typer(keys_app, name="keys")
    return app


def test_keys_add_prints_the_key_once(tmp_path):
    path = tmp_path / "keys.json"
    runner = CliRunner()
    added = runner.invoke(cli(), ["keys", "add", "laptop", "--file", str(path)])
    assert added.exit_code == 0, added.output
    key = added.stdout.strip().splitlines()[0]
    assert KeyStore.open(path).verify(key) == "laptop"
    listed = runner.invoke(cli(), ["keys", "list", "--file", str(path)])
    assert "laptop" in listed.stdout and key not in listed.stdout
    removed = runner.invoke(cli(), ["keys", "remove", "laptop", "--file", str(path)])
    assert removed.exit_code == 0 and read_keys(path) == []


def test_serve_refuses_a_network_host_without_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("LUODI_HOME", str(tmp_path))
    with pytest.raises(InsecureBindError, match="--insecure-no-auth"):
        resolve_keys_file(None, "0.0.0.0", insecure_no_auth=False)
    assert resolve_keys_file(None, "0.0.0.0", insecure_no_auth=True) is None
    assert resolve_keys_file(None, "127.0.0.1", insecure_no_auth=False) is None
    # Keys added with `luodi keys add` (the default file) are used without being asked.
    add_key(tmp_path / "api-keys.json", "ops")
    assert resolve_keys_file(None, "0.0.0.0", insecure_no_auth=False) == tmp_path / "api-keys.json"
    result = CliRunner().invoke(
        cli(), ["serve", "--host", "10.1.2.3", "--api-key-file", str(tmp_path / "none")]
    )
    assert isinstance(result.exception, KeyFileError) and "does not exist" in str(result.exception)


@pytest.mark.parametrize(
    "host,expected",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.8.0.1", True),
        ("0.0.0.0", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host, expected):
    assert is_loopback(host) is expected


# -- a server with keys ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(loaded, tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "keys.json"
    key = add_key(path, "tests")
    with running_server(service_for(make_llm(loaded), api_keys_file=path)) as url:
        yield url, key, path


def test_routes_need_the_key(keyed):
    url, key, _ = keyed
    for method, route in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/nothing"),
    ]:
        for headers in ({}, {"Authorization": "Bearer luodi-not-a-key"}, {"Authorization": key}):
            response = httpx.request(method, url + route, headers=headers, json={})
            assert response.status_code == 401, (route, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            error = response.json()["error"]
            assert error["code"] == "invalid_api_key" and key not in response.text


def test_health_and_the_web_page_are_open(keyed):
    url, _, _ = keyed
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/").status_code == 200
    assert httpx.get(url + "/static/chat.js").status_code == 200


def test_the_key_opens_the_api(keyed):
    url, key, _ = keyed
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    answer = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
    )
    assert answer.usage.completion_tokens >= 1
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="luodi-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_a_revoked_key_stops_working_at_once(keyed):
    url, key, path = keyed
    spare = add_key(path, "spare")
    headers = {"Authorization": f"Bearer {spare}"}
    assert httpx.get(url + "/v1/models", headers=headers).status_code == 200
    remove_key(path, "spare")
    assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert json.loads(path.read_text())["keys"][0]["name"] == "tests"
