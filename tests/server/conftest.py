"""Server test fixtures: $LUODI_HOME pointed at the test cache, and the bundled model loaded once."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from live_server import SMOLLM2
from model_cache import cache_home, pulled_model_path

from luodi.models.loader import LoadedModel, load_model


@pytest.fixture(scope="module", autouse=True)
def luodi_home() -> Iterator[None]:
    """Point $LUODI_HOME at the test cache, as the CLI tests do, so nothing touches the user's."""
    old = os.environ.get("LUODI_HOME")
    os.environ["LUODI_HOME"] = str(cache_home())
    yield
    if old is None:
        os.environ.pop("LUODI_HOME", None)
    else:
        os.environ["LUODI_HOME"] = old


@pytest.fixture(scope="session")
def loaded() -> LoadedModel:
    # float32: bf16 rounding depends on GEMM shapes (batch size, prefix-cache hits), which can flip a
    # near-tie greedy token between a request served alone and one batched with others.
    return load_model(str(pulled_model_path(SMOLLM2)), dtype="float32")
