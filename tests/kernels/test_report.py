"""The startup report of kernel paths: a failed native build is named, in one line, at INFO."""

from __future__ import annotations

import logging
import platform

import pytest

from luodi.kernels import fused, isa, lowbit, report
from luodi.kernels.native_build import NativeExtension, first_error
from luodi.kernels.report import (
    KernelPath, cpu_kernel_paths, device_kernel_paths, first_line, log_kernel_paths,
)

# What torch's cpp_extension raises when the compiler fails (its message holds the build's output).
BUILD_OUTPUT = (
    "Error building extension 'luodi_broken': [1/2] c++ -MMD -MF lowbit.o.d -O3 -march=native -c lowbit.cpp "
    "-o lowbit.o\nFAILED: lowbit.o\nlowbit.cpp:12:10: fatal error: immintrin.h: No such file or directory\n"
    "compilation terminated.\nninja: build stopped: subcommand failed.\n"
)


def test_a_failed_build_is_reported_by_its_first_compiler_error(monkeypatch, tmp_path):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("native builds are tried only on x86-64")

    def failing_build(self, build_dir):
        raise RuntimeError(BUILD_OUTPUT)

    monkeypatch.setattr(NativeExtension, "_build", failing_build)
    monkeypatch.setattr(NativeExtension, "build_dir", lambda self: tmp_path)
    broken = NativeExtension("luodi_broken", "lowbit.cpp", "test kernels", required_cpu_flags=())
    first_compiler_error = "lowbit.cpp:12:10: fatal error: immintrin.h: No such file or directory"
    assert broken.load() == (None, f"compiling lowbit.cpp failed: {first_compiler_error}")


def test_a_failure_without_compiler_output_keeps_its_message():
    assert first_error("ImportError: libgomp.so.1: cannot open shared object file\n") == (
        "ImportError: libgomp.so.1: cannot open shared object file"
    )


def test_first_line_shortens_for_the_log():
    assert first_line("\n  CPU lacks avx2, fma\nmore") == "CPU lacks avx2, fma"
    assert first_line("x" * 500) == "x" * 199 + "…"


def test_a_failed_build_is_logged_at_info_with_its_reason(monkeypatch, caplog):
    monkeypatch.setattr(lowbit, "native_available", lambda: False)
    reason = "compiling lowbit.cpp failed: boom\nmore"
    monkeypatch.setattr(lowbit, "native_unavailable_reason", lambda: reason)
    monkeypatch.setattr(fused, "native_available", lambda: True)
    monkeypatch.setattr(fused, "native_level", lambda: "avx2")
    caplog.set_level(logging.INFO, logger=report.__name__)
    paths = cpu_kernel_paths()
    level = isa.cpu_isa()
    assert paths == (
        KernelPath("instruction-set level", level.level, level.reason),
        KernelPath("low-bit linear", "torch", "compiling lowbit.cpp failed: boom"),
        KernelPath("fused ops", "native avx2"),
    )
    log_kernel_paths(paths)
    [record] = [r for r in caplog.records if r.name == report.__name__]
    assert record.levelno == logging.INFO
    assert "low-bit linear: torch (compiling lowbit.cpp failed: boom)" in record.getMessage()
    assert record.getMessage().endswith("fused ops: native avx2")  # the last group ends the line


def test_this_machine_reports_what_the_kernel_modules_decided():
    by_group = {path.kernels: path for path in cpu_kernel_paths()}
    low_bit = by_group["low-bit linear"]
    if lowbit.native_available():
        assert (low_bit.path, low_bit.reason) == (f"native {lowbit.native_level()}", "")
    else:
        assert low_bit.path == "torch" and low_bit.reason
    fused_path = f"native {fused.native_level()}" if fused.native_available() else "torch"
    assert by_group["fused ops"].path == fused_path
    assert by_group["instruction-set level"].path == isa.cpu_isa().level


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_accelerators_run_torch_ops(device):
    assert device_kernel_paths(device) == (
        KernelPath("kernels", "torch", f"on {device}; the native kernels are CPU-only"),
    )
