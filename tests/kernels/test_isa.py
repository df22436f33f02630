"""Choosing the instruction-set level: detection from CPU flags, LUODI_CPU_ISA, and what a level withholds."""

from __future__ import annotations

import pytest

from luodi.errors import InvalidParameterError
from luodi.kernels import isa, native_build

ZEN2 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
SKYLAKE_SP = ZEN2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
ZEN4 = SKYLAKE_SP | {"avx512_vnni", "avx512_bf16"}


@pytest.mark.parametrize(("flags", "level"), [
    (frozenset(), "generic"), (frozenset({"avx2", "fma"}), "generic"),  # no F16C: not the avx2 level
    (ZEN2, "avx2"), (SKYLAKE_SP, "avx512"), (ZEN4 - {"avx512_bf16"}, "avx512"), (ZEN4, "avx512bf16"),
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
    with pytest.raises(InvalidParameterError, match="'sse9'.*generic, avx2, avx512, avx512bf16"):
        isa.choose_level("sse9", ZEN4)


def test_a_level_withholds_the_flags_above_it() -> None:
    assert isa.usable_flags(ZEN4, "avx2") == ZEN2
    assert isa.usable_flags(ZEN4, "avx512") == ZEN4 - {"avx512_vnni", "avx512_bf16", "avx512cd"}
    assert isa.usable_flags(ZEN4, "generic") == {"sse4_2", "avx", "bmi2"}
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
