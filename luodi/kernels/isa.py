"""Which instruction-set level Luodi's native kernels target on this machine.

Owns the levels, their CPU flags and the one choice made from them: `LUODI_CPU_ISA` if set, else
the best level /proc/cpuinfo's flags cover (x86's `flags` line, AArch64's `Features`). Native
extensions consult `usable_flags()`, so a level forced below what the CPU has makes Luodi behave as
on a CPU of that level (how the AVX2 path is tested and measured on an AVX-512 machine). It knows
nothing of what each kernel computes.

    generic     torch ops only
    avx2        AVX2 + FMA + F16C (Haswell and later, Zen 1-3): the AVX2 builds of the INT8/INT4
                layers and of the fused ops, and the native layer stack over them (no BF16 kernel)
    avx512      AVX-512 F/BW/VL/DQ without VNNI (Skylake-SP): the fused ops' AVX-512 build; the
                low-bit layers run the AVX2 build there (no VNNI dot product)
    avx512vnni  plus AVX512-VNNI, without BF16 (Cascade Lake, Ice Lake): the AVX-512 low-bit build
                without its BF16 kernel (float layers use oneDNN), the fused ops' AVX-512 build
    avx512bf16  plus AVX512-BF16 (Zen 4/5, Cooper Lake, Sapphire Rapids and later)
    neon        AArch64 NEON with the dot-product extension, `asimddp` (Graviton 2+, Ampere
                Altra, Apple M1+; i8mm used where present): the INT8/INT4 layers only
                (native/lowbit_neon.cpp); its kernels are verified under emulation (qemu-user),
                their speed on ARM unmeasured

The x86 levels are ordered weakest first; neon stands beside them (no CPU has both), so detection
and forcing work unchanged on either architecture.

A forced level the CPU lacks falls back to the detected one (a shared setting must not crash an
older machine); an unknown name is an error naming the allowed ones.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from luodi.errors import InvalidParameterError

log = logging.getLogger(__name__)

ENV_VAR = "LUODI_CPU_ISA"
LEVELS = ("generic", "avx2", "avx512", "avx512vnni", "avx512bf16", "neon")  # x86 weakest first, then AArch64
_AVX2 = ("avx2", "fma", "f16c")
_AVX512 = (*_AVX2, "avx512f", "avx512bw", "avx512vl", "avx512dq")
LEVEL_FLAGS: dict[str, tuple[str, ...]] = {
    "generic": (),
    "avx2": _AVX2,
    "avx512": _AVX512,
    "avx512vnni": (*_AVX512, "avx512_vnni"),
    "avx512bf16": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "neon": ("asimd", "asimddp"),
}
# Flags a level may withhold; any other flag (sse4_2, popcnt, ...) is always usable.
_LEVELED_FLAGS = frozenset(flag for flags in LEVEL_FLAGS.values() for flag in flags) | {
    "avx512cd", "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_bitalg", "avx512_vpopcntdq", "avx512_fp16",
    "avx_vnni", "amx_bf16", "amx_int8", "amx_tile",
}


@dataclass(frozen=True, slots=True)
class IsaChoice:
    level: str
    reason: str  # for the startup log: why this level


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo: x86's `flags`, AArch64's `Features` (empty where
    there is none)."""
    try:
        return flags_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def flags_from_cpuinfo(text: str) -> frozenset[str]:
    """The first processor's flags in /proc/cpuinfo's text."""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def detect_level(flags: frozenset[str]) -> str:
    """The best level whose flags `flags` all include."""
    return next(level for level in reversed(LEVELS) if set(LEVEL_FLAGS[level]) <= flags)


def choose_level(requested: str | None, flags: frozenset[str]) -> IsaChoice:
    """The level for a `LUODI_CPU_ISA` value (None or '' = detect) on a CPU with `flags`."""
    detected = detect_level(flags)
    if not requested:
        return IsaChoice(detected, f"detected from the CPU flags (set {ENV_VAR} to force a lower level)")
    level = requested.strip().lower()
    if level not in LEVELS:
        raise InvalidParameterError(f"{ENV_VAR}={requested!r} is not a known level; use one of {', '.join(LEVELS)}")
    missing = [flag for flag in LEVEL_FLAGS[level] if flag not in flags]
    if missing:
        return IsaChoice(detected, f"{ENV_VAR}={level} asked, but the CPU lacks {', '.join(missing)}; using "
                                   f"the detected level")
    return IsaChoice(level, f"forced by {ENV_VAR}")


def cpu_isa(flags: frozenset[str] | None = None) -> IsaChoice:
    """The level in force (read from the environment each call; cheap), logged once per choice."""
    choice = choose_level(os.environ.get(ENV_VAR), cpu_flags() if flags is None else flags)
    _log_once(choice)
    return choice


def usable_flags(flags: frozenset[str], level: str) -> frozenset[str]:
    """`flags` less the SIMD flags above `level`: what code built for this machine may use."""
    allowed = set(LEVEL_FLAGS[level])
    return frozenset(flag for flag in flags if flag not in _LEVELED_FLAGS or flag in allowed)


@functools.cache
def _log_once(choice: IsaChoice) -> None:
    log.info("CPU instruction-set level %s (%s)", choice.level, choice.reason)
