"""Which kernel path runs here, and why: the summary an operator reads at startup.

Owns gathering, from the modules that decide them, the path each group of CPU kernels takes (the
native build of the instruction-set level in force, or torch's ops) with the reason for a fallback
in one line, and the one INFO line that says so. A native build that fails is not an error — the
torch ops serve, slower — so without this line a machine running the slow path would look healthy.
It decides nothing itself, and knows nothing of models or serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from luodi.kernels import fused, isa, lowbit

log = logging.getLogger(__name__)
_MAX_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class KernelPath:
    kernels: str  # which group: "low-bit linear", "fused ops", ...
    path: str  # "native avx512bf16", "native", "torch", "python", ...
    reason: str = ""  # why this path, in one line ('' for a native build)

    def summary(self) -> str:
        return f"{self.path} ({self.reason})" if self.reason else self.path


def first_line(reason: str) -> str:
    """A reason's first line, shortened for a log line (a failed build's reason already leads with
    its first compiler error: `native_build.first_error`)."""
    line = next((line.strip() for line in reason.splitlines() if line.strip()), "")
    return line if len(line) <= _MAX_REASON_CHARS else line[: _MAX_REASON_CHARS - 1] + "…"


def cpu_kernel_paths() -> tuple[KernelPath, ...]:
    """The CPU kernels' paths on this machine (compiles the native builds on the first call)."""
    level = isa.cpu_isa()
    paths = [KernelPath("instruction-set level", level.level, level.reason)]
    if lowbit.native_available():
        paths.append(KernelPath("low-bit linear", f"native {lowbit.native_level()}"))
    else:
        paths.append(KernelPath("low-bit linear", "torch", first_line(lowbit.native_unavailable_reason())))
    if fused.native_available():
        paths.append(KernelPath("fused ops", f"native {fused.native_level()}"))
    else:
        paths.append(KernelPath("fused ops", "torch", first_line(fused.native_unavailable_reason())))
    return tuple(paths)


def device_kernel_paths(device_type: str) -> tuple[KernelPath, ...]:
    """The paths for a model on `device_type`: the CPU kernels', or torch's on an accelerator."""
    if device_type == "cpu":
        return cpu_kernel_paths()
    return (KernelPath("kernels", "torch", f"on {device_type}; the native kernels are CPU-only"),)


def log_kernel_paths(paths: tuple[KernelPath, ...]) -> None:
    log.info("kernel paths: %s", "; ".join(f"{path.kernels}: {path.summary()}" for path in paths))
