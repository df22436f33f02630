"""A server without keys answers only the Host names it is meant for (localhost by default, more with
`--allowed-host`), so a web page that DNS-rebinds its own name to 127.0.0.1 cannot read it; and
every response carries the security headers (CSP without inline script, no framing, nosniff)."""

from __future__ import annotations

import httpx
import pytest
import typer
from live_server import make_llm, running_server, service_for
from typer.testing import CliRunner

from luodi.cli.serve import LOCAL_HOST_NAMES, allowed_hosts, serve
from luodi.server.auth import add_key


@pytest.fixture(scope="module")
def llm(loaded):
    return make_llm(loaded)


@pytest.fixture(scope="module")
def local_url(llm):
    with running_server(service_for(llm, allowed_hosts=(*LOCAL_HOST_NAMES, "my-pc.local"))) as url:
        yield url


def get(url: str, path: str, host: str, **headers: str) -> httpx.Response:
    return httpx.get(url + path, headers={"Host": host, **headers}, timeout=30)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "192.168.1.5", ""])
@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/kb", "/"])
def test_a_foreign_host_is_refused(local_url, host, path):
    response = get(local_url, path, host)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "host_not_allowed" and "--allowed-host" in error["message"]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000", "[::1]",
                                  "LOCALHOST", "my-pc.local:8000"])
def test_local_and_allowed_hosts_are_served(local_url, host):
    assert get(local_url, "/v1/models", host).status_code == 200


def test_a_server_with_keys_checks_the_key_not_the_host(llm, tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "ops")
    with running_server(service_for(llm, api_keys_file=path)) as url:
        assert get(url, "/v1/models", "api.example.com", Authorization=f"Bearer {key}").status_code == 200


def test_allowed_hosts_from_the_cli_options():
    assert allowed_hosts("127.0.0.1", []) == LOCAL_HOST_NAMES
    assert allowed_hosts("localhost", ["My-PC.local"]) == (*LOCAL_HOST_NAMES, "my-pc.local")
    assert allowed_hosts("0.0.0.0", []) is None  # a network bind (needs keys or --insecure-no-auth)
    assert allowed_hosts("0.0.0.0", ["box.lan"]) == (*LOCAL_HOST_NAMES, "box.lan")


def test_serve_refuses_a_malformed_allowed_host():
    app = typer.Typer()
    app.command()(serve)
    result = CliRunner().invoke(app, ["--allowed-host", "http://my-pc.local:8000"])
    assert result.exit_code != 0
    assert "--allowed-host 'http://my-pc.local:8000' is not a host name" in str(result.exception or result.output)


SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@pytest.mark.parametrize("path", ["/", "/static/chat.js", "/static/chat.css", "/v1/models", "/health", "/nowhere"])
def test_security_headers_on_the_page_static_files_and_api(local_url, path):
    response = get(local_url, path, "127.0.0.1")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    csp = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'"  # no inline script, no eval
    assert csp["frame-ancestors"] == "'none'"


def test_a_refused_host_gets_the_headers_too(local_url):
    assert get(local_url, "/", "evil.example").headers["x-frame-options"] == "DENY"
