"""The ARM64 NEON low-bit kernels, cross-compiled and run under qemu-user, against the x86 tests' oracle.

Weights are packed with the real `prepack_int8` / `prepack_int4` (the tiled layout is built by
torch ops, so it needs no native build here), written with the activations to a file that
`harness.cpp` (the NEON kernels of `luodi/kernels/native/lowbit_neon.h`, built with
`aarch64-linux-gnu-g++ -static -march=armv8.2-a+dotprod`) reads under `qemu-aarch64`, emulating a
CPU with the dot product only and one with i8mm too (whose kernels must agree bit for bit). Its outputs
must meet the bounds `tests/kernels/test_lowbit.py` holds the x86 builds to, against the float
reference x @ dequantized(W).T; and, tighter, match the x86 builds' outputs on the same packed input
up to fp32 summation, where those builds run here (all round x the same way), and bit for bit the
AVX2 build, whose fp32 steps the NEON kernels repeat in the same order. Emulation checks
correctness only; it says nothing about speed on ARM hardware.

Skipped when the cross compiler or qemu-user is missing, unless LUODI_REQUIRE_CROSS=1 (CI), which
makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils import cpp_extension

from luodi.kernels import lowbit

# tests/kernels on the path: the x86 kernel tests' stored forms, reference and bounds are the oracle.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import test_lowbit as oracle  # noqa: E402

HERE = Path(__file__).resolve().parent
NATIVE_DIR = Path(lowbit.__file__).resolve().parent / "native"
CXX, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"
CXXFLAGS = ("-std=c++17", "-O2", "-static", "-march=armv8.2-a+dotprod", "-Wall", "-Werror")
REQUIRE_VAR = "LUODI_REQUIRE_CROSS"
KINDS = {"int8": 0, "w8a8": 1, "int4": 2, "int4_coded": 3}  # harness.cpp's case kinds
SHAPES = [(67, 160), (21, 288), (19, 300)]  # N not a multiple of 16; K = 5 and 9 blocks of 32, then padded
ROWS = [1, 3, 8, 11]  # decode, verify, a full pass, and a second pass
# Emulated CPUs and the kernels the harness runs on each: a Cortex-A76 has the dot product and no
# i8mm, so the dot-product kernels must run with nothing more; qemu's "max" has i8mm.
CPUS = {"cortex-a76": "dotprod", "max": "i8mm"}


def require_tools(*tools: str) -> None:
    """Skip without the cross tools, or fail where CI promised them (LUODI_REQUIRE_CROSS=1)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        why = f"{' and '.join(missing)} not found (Debian packages g++-aarch64-linux-gnu and qemu-user)"
        if os.environ.get(REQUIRE_VAR) == "1":
            pytest.fail(f"{REQUIRE_VAR}=1 but {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools(CXX, QEMU)
    binary = tmp_path_factory.mktemp("neon") / "harness"
    done = subprocess.run([CXX, *CXXFLAGS, f"-I{NATIVE_DIR}", str(HERE / "harness.cpp"), "-o", str(binary)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return binary


@pytest.fixture(scope="module")
def x86_builds() -> dict[str, object]:
    """The x86 builds of the same kernels that run on this machine, by level."""
    builds = {}
    for level, extension in (("avx512bf16", lowbit.EXTENSION), ("avx2", lowbit.AVX2_EXTENSION)):
        module, _ = extension.load()
        if module is not None:
            builds[level] = module
    return builds


def packed_natively(pack: Callable, *args):
    """`pack(*args)` in the native tiled layout, whether or not an x86 build runs here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lowbit, "native_available", lambda: True)
        packed = pack(*args)
    assert packed.is_native
    return packed


def run_neon(harness: Path, tmp_path: Path, kind: str, packed, x: torch.Tensor, bias: torch.Tensor | None,
             ) -> torch.Tensor:
    """The NEON kernels' y [M, N] for x [M, K] (fp32) under qemu."""
    m, k = x.shape
    scales = packed.scales if kind in ("int8", "w8a8") else torch.empty(0)
    group_size = getattr(packed, "group_size", 0)
    header = [KINDS[kind], m, packed.out_features, k, packed.padded_in_features, group_size, bias is not None,
              packed.weight.numel(), scales.numel()]
    parts = [np.array(header, dtype="<i8").tobytes(), packed.weight.contiguous().numpy().tobytes(),
             scales.float().numpy().astype("<f4").tobytes()]
    if bias is not None:
        parts.append(bias.float().numpy().astype("<f4").tobytes())
    parts.append(x.float().contiguous().numpy().astype("<f4").tobytes())
    case = tmp_path / "case.bin"
    case.write_bytes(b"".join(parts))
    outputs = {}
    for cpu, kernels in CPUS.items():
        out = tmp_path / f"y-{cpu}.bin"
        done = subprocess.run([QEMU, "-cpu", cpu, str(harness), str(case), str(out)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{cpu}: {done.stderr[-2000:]}"
        assert done.stdout.strip() == kernels
        outputs[cpu] = torch.from_numpy(np.fromfile(out, dtype="<f4").reshape(m, packed.out_features).copy())
    # Integer block sums are exact whichever instructions form them: i8mm changes no bit.
    assert torch.equal(outputs["max"], outputs["cortex-a76"])
    return outputs["cortex-a76"]


def assert_matches_x86(y: torch.Tensor, x86: dict[str, torch.Tensor], x: torch.Tensor, w: torch.Tensor) -> None:
    """Same rounding of x, same integer sums: only fp32 summation may separate the builds. The AVX2
    build does the same fp32 operations in the same order (one chain per output, the same fused
    multiply-adds), so its outputs must be bit-identical; the AVX-512 build scales differently."""
    allowed = oracle.FP32_SUM_EPS * (x.double().abs() @ w.double().abs().T) + 1e-6
    for level, theirs in x86.items():
        err = (y.double() - theirs.double()).abs()
        assert (err <= allowed).all(), f"{level}: max difference {err.max():.3g}"
    if "avx2" in x86:
        assert torch.equal(y, x86["avx2"]), f"differs from the AVX2 build by up to {(y - x86['avx2']).abs().max():.3g}"


def random_bias(n: int, m: int) -> torch.Tensor | None:
    return torch.randn(n, generator=torch.Generator().manual_seed(n)) if m % 2 else None


# -- INT8 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_int8_two_term_matches_float_reference(harness: Path, x86_builds: dict, tmp_path: Path, m: int, n: int,
                                               k: int) -> None:
    """Weight-only INT8 rounds x in two terms: the x86 tests' bound / 254, plus fp32 summation."""
    qweight, scales = oracle.stored_int8(oracle.weights(n, k))
    x, bias = oracle.activations(m, k, torch.float32), random_bias(n, m)
    packed = packed_natively(lowbit.prepack_int8, qweight, scales)
    y = run_neon(harness, tmp_path, "int8", packed, x, bias)
    exact = qweight.float() * scales[:, None]
    err = (y.double() - oracle.reference(x, exact, bias)).abs()
    bound = lowbit.activation_error_bound(x, exact).double() / 254
    bound += oracle.FP32_SUM_EPS * (x.double().abs() @ exact.double().abs().T) + 1e-6
    assert (err <= bound).all(), f"max error {err.max():.3g}"
    x86 = {level: build.int8_linear(x, packed.weight, packed.scales, bias, n, k, packed.padded_in_features, False)
           for level, build in x86_builds.items()}
    assert_matches_x86(y, x86, x, exact)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_w8a8_is_smoothquants_rounding(harness: Path, x86_builds: dict, tmp_path: Path, m: int, n: int,
                                       k: int) -> None:
    """Per-row mode: x rounded once per row (scale = max|x_row| / 127, half to even), then exact."""
    qweight, scales = oracle.stored_int8(oracle.weights(n, k))
    x = oracle.activations(m, k, torch.float32)
    packed = packed_natively(lowbit.prepack_int8, qweight, scales)
    y = run_neon(harness, tmp_path, "w8a8", packed, x, None)
    step = (x.abs().amax(1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)  # [M, 1]
    x_rounded = torch.round(x / step) * step
    exact = qweight.float() * scales[:, None]
    bound = oracle.FP32_SUM_EPS * (x_rounded.double().abs() @ exact.double().abs().T) + 1e-6
    assert ((y.double() - oracle.reference(x_rounded, exact, None)).abs() <= bound).all()
    x86 = {level: build.int8_linear(x, packed.weight, packed.scales, None, n, k, packed.padded_in_features, True)
           for level, build in x86_builds.items()}
    assert_matches_x86(y, x86, x, exact)


# -- INT4 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("group_size", lowbit.GROUP_SIZES)
@pytest.mark.parametrize("coded", [False, True], ids=["fp16-grid", "coded-grid"])
def test_int4_matches_float_reference(harness: Path, x86_builds: dict, tmp_path: Path, m: int, n: int, k: int,
                                      group_size: int, coded: bool) -> None:
    w = oracle.weights(n, k)
    if coded:
        nibbles, scale_codes, min_codes, steps = oracle.coded_int4(w, group_size)
        packed = packed_natively(lowbit.prepack_int4, nibbles, scale_codes, min_codes, group_size, steps)
        exact = oracle.dequant_int4(nibbles, *oracle.decoded(scale_codes, min_codes, steps), group_size)
    else:
        nibbles, scales, mins = oracle.stored_int4(w, group_size)
        packed = packed_natively(lowbit.prepack_int4, nibbles, scales, mins, group_size)
        exact = oracle.dequant_int4(nibbles, scales, mins, group_size)
    x, bias = oracle.activations(m, k, torch.float32), random_bias(n, m)
    y = run_neon(harness, tmp_path, "int4_coded" if coded else "int4", packed, x, bias)
    oracle.assert_within_activation_bound(y, x, exact, bias)
    x86 = {level: build.int4_linear(x, packed.weight, bias, n, k, packed.padded_in_features, group_size, coded)
           for level, build in x86_builds.items()}
    assert_matches_x86(y, x86, x, exact)


def test_rows_give_the_same_outputs_alone_and_batched(harness: Path, tmp_path: Path) -> None:
    """Batch invariance, as on x86: a row's result is bit-identical whatever the rows beside it."""
    n, k = 67, 288
    w, x = oracle.weights(n, k), oracle.activations(11, k, torch.float32)
    cases = [("int8", packed_natively(lowbit.prepack_int8, *oracle.stored_int8(w))),
             ("int4", packed_natively(lowbit.prepack_int4, *oracle.stored_int4(w, 32), 32))]
    for kind, packed in cases:
        batched = run_neon(harness, tmp_path, kind, packed, x, None)
        for row in (0, 5, 8, 10):
            assert torch.equal(run_neon(harness, tmp_path, kind, packed, x[row:row + 1], None)[0], batched[row])


def test_the_torch_binding_compiles_for_aarch64() -> None:
    """lowbit_neon.cpp cannot be linked here (no aarch64 torch), but it must compile for aarch64
    against torch's headers, which are the same on every architecture."""
    require_tools(CXX)
    includes = [f"-I{path}" for path in (*cpp_extension.include_paths(), sysconfig.get_paths()["include"])]
    source = str(NATIVE_DIR / lowbit.NEON_EXTENSION.source)
    done = subprocess.run([CXX, "-std=c++20", "-fsyntax-only", *lowbit.NEON_EXTENSION.cflags, "-Werror=return-type",
                           "-DTORCH_EXTENSION_NAME=luodi_lowbit_neon", *includes, source],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
