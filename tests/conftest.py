"""Suite-wide pytest setup. Its presence puts `tests/` on sys.path, so test modules can
`from model_cache import pulled_model_path`."""

import pytest


@pytest.fixture(scope="module")
def batch_invariant_kernels():
    """The kernels' batch-invariant mode for a module's tests (off by default: it costs speed;
    `luodi.kernels.lowbit`), switched back off afterwards."""
    from luodi.kernels import fused, lowbit

    for module in (lowbit, fused):
        module.set_batch_invariant(True)
    yield
    for module in (lowbit, fused):
        module.set_batch_invariant(False)
