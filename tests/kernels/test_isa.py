"""Choosing the instruction-set level: detection from CPU flags, LUODI_CPU_ISA, and what a level withholds."""

from __future__ import annotations

import pytest

from luodi.errors import InvalidParameterError
from luodi.kernels import isa, native_build

ZEN2 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
SKYLAKE_SP = ZEN2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
CASCADE_LAKE = SKYLAKE_SP | {"avx512_vnni"}
ZEN4 = CASCADE_LAKE | {"avx512_bf16"}


@pytest.mark.parametrize(("flags", "level"), [
    (frozenset(), "generic"), (frozenset({"avx2", "fma"}), "generic"),  # no F16C: not the avx2 level
    (ZEN2, "avx2"), (SKYLAKE_SP, "avx512"), (CASCADE_LAKE, "avx512vnni"), (ZEN4, "avx512bf16"),
    (ZEN4 - {"avx512_vnni"}, "avx512"),  # BF16 without VNNI: no such CPU, and no level above avx512
])
def test_detects_the_best_level_the_flags_cover(flags: frozenset[str], level: str) -> None:
    assert isa.detect_level(flags) == level
    assert isa.choose_level(None, flags).level == level
    assert isa.choose_level("", flags).level == level


def test_a_forced_level_is_used_when_the_cpu_has_it() -> None:
    choice = isa.choose_level(" AVX2 ", ZEN4)
    assert choice == isa.IsaChoice("avx2", "forced by LUODI_CPU_ISA")


def test_a_forced_level_the_cpu_lacks_falls_back_to_detection() -> None:
    choice = isa.choose_level("avx512bf16", ZEN2)
    assert choice.level == "avx2"
    assert "lacks avx512f" in choice.reason and "avx512_bf16" in choice.reason


def test_an_unknown_level_names_the_allowed_ones() -> None:
    with pytest.raises(InvalidParameterError, match="'sse9'.*generic, avx2, avx512, avx512vnni, avx512bf16"):
        isa.choose_level("sse9", ZEN4)


def test_a_level_withholds_the_flags_above_it() -> None:
    assert isa.usable_flags(ZEN4, "avx2") == ZEN2
    assert isa.usable_flags(ZEN4, "avx512") == ZEN4 - {"avx512_vnni", "avx512_bf16", "avx512cd"}
    assert isa.usable_flags(ZEN4, "generic") == {"sse4_2", "avx", "bmi2"}
    assert isa.usable_flags(ZEN4, "avx512vnni") == ZEN4 - {"avx512_bf16", "avx512cd"}
    assert isa.usable_flags(ZEN4, "avx512bf16") == ZEN4 - {"avx512cd"}


def test_an_extension_above_the_level_is_refused_before_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compile(self) -> None:
        raise AssertionError("must not compile")

    monkeypatch.setattr(native_build, "cpu_flags", lambda: ZEN4)
    monkeypatch.setattr(native_build.NativeExtension, "_compile", no_compile)
    monkeypatch.setenv(isa.ENV_VAR, "avx2")
    extension = native_build.NativeExtension("x", "lowbit.cpp", "test kernels", required_cpu_flags=("avx512f",))
    module, reason = extension.load()
    assert module is None and reason == "instruction-set level avx2 (forced by LUODI_CPU_ISA) excludes avx512f"


# -- AArch64 ----------------------------------------------------------------------------------------
GRAVITON2 = frozenset({"fp", "asimd", "evtstrm", "aes", "pmull", "crc32", "atomics", "fphp", "asimdhp", "asimdrdm",
                       "lrcpc", "dcpop", "asimddp", "ssbs"})
CORTEX_A72 = frozenset({"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"})
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
"""


def test_reads_the_flags_of_x86_and_aarch64_cpuinfo() -> None:
    assert "asimddp" in isa.flags_from_cpuinfo(ARM_CPUINFO) and "BogoMIPS" not in isa.flags_from_cpuinfo(ARM_CPUINFO)
    assert isa.flags_from_cpuinfo("processor\t: 0\nflags\t\t: fpu sse avx2\n") == {"fpu", "sse", "avx2"}
    assert isa.flags_from_cpuinfo("processor\t: 0\n") == frozenset()


def test_detects_neon_with_the_dot_product_only() -> None:
    assert isa.detect_level(GRAVITON2) == "neon"
    assert isa.detect_level(isa.flags_from_cpuinfo(ARM_CPUINFO)) == "neon"
    assert isa.detect_level(CORTEX_A72) == "generic"  # NEON without sdot/udot: no build of its own


def test_forcing_levels_across_architectures_falls_back_to_detection() -> None:
    assert isa.choose_level("avx2", GRAVITON2).level == "neon"
    assert isa.choose_level("neon", ZEN4).level == "avx512bf16"
    assert isa.choose_level("generic", GRAVITON2) == isa.IsaChoice("generic", "forced by LUODI_CPU_ISA")
    assert isa.usable_flags(GRAVITON2, "generic") == GRAVITON2 - {"asimd", "asimddp"}
    assert isa.usable_flags(ZEN4, "avx512bf16") == ZEN4 - {"avx512cd"}  # x86 levels as before
