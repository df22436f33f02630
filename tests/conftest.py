"""Suite-wide pytest setup. Its presence puts `tests/` on sys.path, so test modules can
`from model_cache import pulled_model_path`."""

import pytest


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
