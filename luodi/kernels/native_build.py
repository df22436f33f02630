"""Compiling Luodi's C++ CPU kernels at first use, and deciding whether they can run here.

Owns the one recipe the native modules (`lowbit`, `fused`, the layer stack) share: check the CPU
architecture and flags (those the instruction-set level in force allows, `luodi.kernels.isa`),
compile the source with torch's `cpp_extension` into `BUILD_ROOT/NAME-KEY/` (`build_root()`:
`$LUODI_KERNEL_CACHE`, else `$LUODI_HOME/build`), load it, and ask it whether this CPU runs what it was compiled for. Any failure becomes a reason string,
never an exception: callers fall back to torch ops. A failed build's reason is its first compiler
error (the whole output goes to the debug log), so that one line can say why (`luodi.kernels.report`). The build key covers everything the binary
depends on — source, torch version, flags and, for `-march=native` builds, this CPU (such code must
not be reused on another CPU model that shares the home directory).

Builds of one directory are serialized by an OS file lock (`_exclusive`), which dies with its
process: torch's own lock is a plain file that a build killed midway (kill, SIGTERM, power loss)
leaves behind, after which every later start would wait on it forever. Holding the OS lock, a
leftover torch lock can only be stale, so it is removed.

A first-use compile takes minutes on a small machine, so it is announced: whoever must explain the
wait (the server's `/health` and log) registers a listener with `add_compile_listener`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from luodi.kernels import isa
from luodi.kernels.isa import cpu_flags  # here too: tests stand in a CPU by patching it
from luodi.paths import luodi_home

NATIVE_DIR = Path(__file__).resolve().parent / "native"
X86_64 = ("x86_64", "amd64")
AARCH64 = ("aarch64", "arm64")
TORCH_BUILD_LOCK = "lock"  # the file torch's cpp_extension waits on while another build runs

log = logging.getLogger(__name__)
CompileListener = Callable[[str | None], None]  # told what is compiling ("low-bit kernels"), then None
_compile_listeners: list[CompileListener] = []


def build_root() -> Path:
    """Where compiled kernels live: `$LUODI_KERNEL_CACHE`, else `$LUODI_HOME/build`. A build's key
    covers all it depends on, so homes may share one cache (the tests' homes do)."""
    cache = os.environ.get("LUODI_KERNEL_CACHE")
    return Path(cache).expanduser() if cache else luodi_home() / "build"


def add_compile_listener(listener: CompileListener) -> Callable[[], None]:
    """Call `listener(what)` when a first-use compile starts and `listener(None)` when it ends;
    returns the function that removes it."""
    _compile_listeners.append(listener)
    return lambda: _compile_listeners.remove(listener)


def first_error(output: str) -> str:
    """The line of a build's output that says what went wrong: the first compiler diagnostic
    ("error:"), else the first line (a Python-level failure's message)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[0] if lines else "no output")


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on `lock_path` (released by the kernel if this process dies)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def announce_compile(what: str) -> Iterator[None]:
    """Tell the listeners that `what` is being compiled while the block runs."""
    for listener in list(_compile_listeners):
        listener(what)
    try:
        yield
    finally:
        for listener in list(_compile_listeners):
            listener(None)


@dataclass(frozen=True)
class NativeExtension:
    name: str  # the Python module name the extension defines
    source: str  # file under kernels/native/
    what: str  # for messages: "low-bit kernels"
    required_cpu_flags: tuple[str, ...]
    cflags: tuple[str, ...] = ("-O3", "-march=native", "-fopenmp")
    architectures: tuple[str, ...] = X86_64  # `platform.machine()` names the source compiles for

    def supports_machine(self) -> bool:
        """Whether the source is written for this CPU architecture."""
        return platform.machine().lower() in self.architectures

    @property
    def source_path(self) -> Path:
        return NATIVE_DIR / self.source

    def build_dir(self) -> Path:
        # Only -march=native code depends on the CPU that built it; a build with fixed flags (AVX2,
        # AVX-512 VNNI, NEON, the layer stack) is the same binary on every CPU.
        cpu = platform.processor() + " ".join(sorted(cpu_flags())) if "-march=native" in self.cflags else ""
        sources = [self.source_path, *sorted(NATIVE_DIR.glob("*.h"))]  # the headers it may include
        key = hashlib.sha256(b"\0".join([
            *(path.read_bytes() for path in sources), torch.__version__.encode(), " ".join(self.cflags).encode(),
            cpu.encode(),
        ])).hexdigest()[:16]
        return build_root() / f"{self.name}-{key}"

    def is_built(self) -> bool:
        try:
            return (self.build_dir() / f"{self.name}.so").exists()
        except OSError:  # the source is missing: nothing to find (the build will say why)
            return False

    def runs_on_this_cpu(self) -> bool:
        """Whether this machine could run the build at some instruction-set level (the level in
        force aside): its architecture, and every CPU flag it needs."""
        return self.supports_machine() and all(flag in cpu_flags() for flag in self.required_cpu_flags)

    def load(self) -> tuple[Any, str]:
        """(the extension module, '') or (None, why it cannot run here). Compiles on first use."""
        if not self.supports_machine():
            return None, f"CPU architecture {platform.machine()} is not {' / '.join(self.architectures)}"
        flags = cpu_flags()
        missing = [flag for flag in self.required_cpu_flags if flag not in flags]
        if missing:
            return None, f"CPU lacks {', '.join(missing)}"
        choice = isa.cpu_isa(flags)
        withheld = [flag for flag in self.required_cpu_flags if flag not in isa.usable_flags(flags, choice.level)]
        if withheld:
            return None, f"instruction-set level {choice.level} ({choice.reason}) excludes {', '.join(withheld)}"
        try:
            module = self._compile()
        except Exception as exc:  # noqa: BLE001 - any build or load failure means "use torch ops"
            log.debug("compiling %s failed", self.source, exc_info=exc)  # the whole compiler output
            return None, self.failure(exc)
        if not module.cpu_supported():
            return None, f"CPU lacks the instructions the {self.what} were compiled for"
        return module, ""

    def failure(self, exc: Exception) -> str:
        """The one-line reason a failed build gives: its first compiler error."""
        return f"compiling {self.source} failed: {first_error(f'{type(exc).__name__}: {exc}')}"

    def _compile(self) -> Any:
        build_dir = self.build_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(build_dir / ".build.lock"):
            (build_dir / TORCH_BUILD_LOCK).unlink(missing_ok=True)
            if (build_dir / f"{self.name}.so").exists():  # `build_dir`: hashing the sources once is enough
                return self._build(build_dir)
            print(f"luodi: compiling native {self.what} into {build_dir} (first use only)", file=sys.stderr)
            with announce_compile(f"native {self.what}"):
                return self._build(build_dir)

    def _build(self, build_dir: Path) -> Any:
        from torch.utils import cpp_extension

        return cpp_extension.load(
            name=self.name, sources=[str(self.source_path)], build_directory=str(build_dir),
            extra_cflags=list(self.cflags), extra_ldflags=["-fopenmp"], verbose=False,
        )


def compile_all(extensions: Iterable[NativeExtension], jobs: int,
                done: Callable[[NativeExtension, str], None] | None = None) -> list[tuple[NativeExtension, str]]:
    """Compile every extension this CPU could run, at any level, `jobs` at a time, each in a process
    of its own (a build is one compiler process: on a 2-core machine two builds take the time of
    one); (extension, '' or why it failed) for each, in order. `done` hears of each as it ends.
    What is built already is taken as it is, without a process."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    wanted = [extension for extension in extensions if extension.runs_on_this_cpu()]
    results: dict[NativeExtension, str] = {extension: "" for extension in wanted if extension.is_built()}
    missing = [extension for extension in wanted if extension not in results]
    if not missing:
        return [(extension, "") for extension in wanted]
    # spawn, not fork: a forked copy of a process that has run OpenMP threads can deadlock.
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(missing))), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_compile_reason, extension): extension for extension in missing}
        for future in as_completed(futures):
            extension = futures[future]
            results[extension] = future.result()
            if done is not None:
                done(extension, results[extension])
    return [(extension, results[extension]) for extension in wanted]


def _compile_reason(extension: NativeExtension) -> str:
    """'' once `extension` is built here, else its first compiler error (run in a worker process)."""
    try:
        extension._compile()
    except Exception as exc:  # noqa: BLE001 - reported, as `load` does
        return extension.failure(exc)
    return ""
