"""Suite-wide pytest setup. Its presence puts `tests/` on sys.path, so test modules can
`from model_cache import pulled_model_path`.

Every test, and every process a test starts, shares one kernel cache (`$LUODI_KERNEL_CACHE`, by
default under the test cache) whatever `$LUODI_HOME` it sets, and the native builds are compiled
there before the first test, as many at a time as there are cores: otherwise the in-process
tests, the CLI and server tests (the test cache's home) and the knowledge-base tests (a temporary
home) would each compile them again, one after another."""

import os

import pytest

from model_cache import cache_home


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ.setdefault("LUODI_KERNEL_CACHE", str(cache_home() / "build"))
    from luodi.cli.kernels import native_extensions
    from luodi.kernels.native_build import compile_all

    def done(extension, reason: str) -> None:  # noqa: ANN001
        print(f"native {extension.what}: {'built' if not reason else reason}", flush=True)

    compile_all(native_extensions(), os.cpu_count() or 1, done)


@pytest.fixture(scope="module")
def batch_invariant_kernels():
    """The kernels' batch-invariant mode for a module's tests (the default unless
    LUODI_BATCH_INVARIANT=0; `luodi.kernels.lowbit`), switched back to what it was afterwards."""
    from luodi.kernels import fused, lowbit

    before = lowbit._batch_invariant
    for module in (lowbit, fused):
        module.set_batch_invariant(True)
    yield
    for module in (lowbit, fused):
        module.set_batch_invariant(before)
