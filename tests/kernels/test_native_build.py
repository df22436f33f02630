"""A native build killed midway must not hang every later start: torch's build lock is a plain file
that a killed build leaves behind; Luodi serializes builds with an OS lock instead and clears it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from luodi.kernels.fused import EXTENSION
from luodi.kernels.native_build import TORCH_BUILD_LOCK

LOAD = "from luodi.kernels.fused import EXTENSION; m, why = EXTENSION.load(); print('loaded' if m else why)"


def test_a_stale_torch_build_lock_is_cleared_not_waited_on():
    module, reason = EXTENSION.load()  # built once (minutes the first time), as every fused test needs
    if module is None:
        pytest.skip(f"the native ops cannot run here: {reason}")
    stale = EXTENSION.build_dir() / TORCH_BUILD_LOCK
    stale.write_text("")  # what a build killed with SIGKILL leaves
    # torch's cpp_extension would wait on this file forever; a fresh process must load at once.
    done = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "loaded", done.stderr[-2000:]
    assert not stale.exists()


def test_compile_all_builds_what_runs_here_and_reports_what_fails():
    """`luodi kernels --build-all`'s engine: each missing build in a worker process; one that cannot
    compile is reported by its error, one built already is taken as it is (no process, no report),
    one this CPU cannot run is not tried."""
    from luodi.kernels.native_build import NativeExtension, compile_all

    if EXTENSION.load()[0] is None:
        pytest.skip("the native ops cannot run here")
    broken = NativeExtension("luodi_missing", "missing.cpp", "test kernels", required_cpu_flags=())
    foreign = NativeExtension("luodi_foreign", "fused_ops.cpp", "test kernels", required_cpu_flags=("no_such_flag",))
    heard = []
    results = compile_all([EXTENSION, broken, foreign], jobs=2, done=lambda ext, why: heard.append(ext.name))
    assert [ext.name for ext, _ in results] == [EXTENSION.name, broken.name]
    assert heard == [broken.name]
    reasons = dict((ext.name, why) for ext, why in results)
    assert reasons[EXTENSION.name] == ""
    assert reasons[broken.name].startswith("compiling missing.cpp failed: FileNotFoundError")


def test_only_native_code_is_keyed_by_the_cpu(monkeypatch):
    """A -march=native binary must not serve another CPU model; a fixed-flag one is the same binary
    everywhere, so a CPU with other flags reuses it instead of compiling it again."""
    from luodi.kernels import lowbit, native_build

    native, fixed = lowbit.EXTENSION, lowbit.AVX2_EXTENSION
    assert "-march=native" in native.cflags and "-march=native" not in fixed.cflags
    before = native.build_dir(), fixed.build_dir()
    monkeypatch.setattr(native_build, "cpu_flags", lambda: frozenset({"avx2", "fma", "f16c"}))
    assert native.build_dir() != before[0]
    assert fixed.build_dir() == before[1]
