"""Session-wide access to real catalog models for tests.

Models are pulled once into a persistent cache, `$LUODI_TEST_HOME` (default `<repo>/.cache/test-home`),
so repeated runs and CI reuse them. Import `pulled_model_path` from any test module.
"""

import functools
import os
from pathlib import Path

from luodi.loading.catalog import pull

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_home() -> Path:
    return Path(os.environ.get("LUODI_TEST_HOME") or REPO_ROOT / ".cache" / "test-home").expanduser()


@functools.cache
def pulled_model_path(name: str) -> Path:
    """Path to catalog model `name`, pulled (and sha256-checked) once into the test cache."""
    return pull(name, progress=False, root=cache_home() / "models")

