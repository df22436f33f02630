"""`form_file` reads back exactly what httpx's multipart encoder (the oracle) sent, and names what
is wrong with a form that carries no file."""

from __future__ import annotations

import random

import httpx
import pytest

from luodi.errors import InvalidParameterError
from luodi.server.multipart import form_file


def encoded(**kwargs) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://127.0.0.1/", **kwargs)
    return request.headers["content-type"], request.read()


@pytest.mark.parametrize("name", ["report.pdf", "年假 制度.docx", "notes (v2).md"])
def test_any_bytes_and_name_come_back_unchanged(name):
    content = bytes(random.Random(7).randrange(256) for _ in range(50_000)) + b"\r\n--\r\n\r\n"
    content_type, body = encoded(files={"file": (name, content)}, data={"note": "ignored"})
    assert form_file(content_type, body) == (name, content)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"json": {"file": "x"}}, "not a multipart/form-data upload"),
    ({"files": {"document": ("a.md", b"# A")}}, "no 'file' field"),
    ({"files": {"file": (None, b"# A")}, "data": {"x": "1"}}, "no file name"),
])
def test_a_form_without_a_file_is_named(kwargs, needle):
    with pytest.raises(InvalidParameterError, match=needle) as caught:
        form_file(*encoded(**kwargs))
    assert caught.value.param == "file"
