"""Fixtures for the loading tests: the two real GGUF models, and oracle readers shared per session.

The model fixtures pull the catalog models once into the test cache (see `model_cache`). gguf-py's `GGUFReader` (the oracle) takes ~15 s to parse Gemma 3's vocabulary, and
transformers' GGUF loader builds a fresh one on every call, so one reader per file is cached for
the session and handed to transformers too: the oracle's values are unchanged, only parsed once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model_cache import pulled_model_path

@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return pulled_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    return pulled_model_path("gemma3-270m")


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
