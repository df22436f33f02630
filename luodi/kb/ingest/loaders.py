"""One entry point from a file to its blocks: `load_document` picks the loader by suffix.

Owns the supported-type table and the boundary between user files and the format loaders:
every way a file can be bad (unknown type, missing, corrupt, encrypted, no text) leaves here as
one `DocumentError` line naming the file and what to do, never a library's traceback; a
missing optional dependency leaves as a `LuodiError` with the install hint. Every loader is
given the document's `IngestBudget` (limits, deadline, cancellation) and must respect it. Each format's
module is imported only when a file of that type is loaded. Knows nothing about chunking,
embedding or storage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from luodi.errors import DocumentError, LuodiError
from luodi.kb.document import Block
from luodi.kb.ingest.limits import IngestBudget

INSTALL_HINT = "pip install 'luodi[kb]'"

# suffix → (module in luodi.kb.ingest, its loader function)
_LOADERS: dict[str, tuple[str, str]] = {
    ".txt": ("text", "load_text"),
    ".md": ("text", "load_markdown"),
    ".markdown": ("text", "load_markdown"),
    ".html": ("html", "load_html"),
    ".htm": ("html", "load_html"),
    ".pdf": ("pdf", "load_pdf"),
    ".docx": ("docx", "load_docx"),
    ".png": ("image", "load_image"),
    ".jpg": ("image", "load_image"),
    ".jpeg": ("image", "load_image"),
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_LOADERS)

# import name → the distribution to install, where they differ
_DISTRIBUTIONS = {"docx": "python-docx", "PIL": "pillow"}


def load_document(path: Path, budget: IngestBudget | None = None) -> list[Block]:
    """The text blocks of the document at `path`, in reading order, within `budget` (the
    default limits, no deadline shared with anything else, if None).

    Raises DocumentError for an unsupported type, a missing, unreadable or corrupt file, or a
    document with no text at all; IngestLimitError (a DocumentError) for one over a limit;
    IngestCancelledError once the budget is cancelled.
    """
    path = Path(path)
    loader = _loader_for(path)
    if not path.is_file():
        raise DocumentError(f"{path}: no such file; check the path")
    try:
        blocks = loader(path, budget if budget is not None else IngestBudget(name=str(path)))
    except LuodiError:
        raise
    except ImportError as exc:
        raise _missing_dependency(path, exc) from exc
    except Exception as exc:  # noqa: BLE001 — any failure on a bad file is the file's, not ours
        raise DocumentError(f"{path}: cannot read this {path.suffix.lower()} file "
                            f"({type(exc).__name__}: {_first_line(exc)}); check that it opens in "
                            "its usual application, re-save or re-export it, and add it again") from exc
    blocks = [b for b in blocks if b.text.strip()]
    if not blocks:
        raise DocumentError(f"{path}: no text found; if it is a scan or photo, check that the "
                            "text is legible, otherwise the document is empty")
    return blocks


def _loader_for(path: Path) -> Callable[[Path, IngestBudget], list[Block]]:
    entry = _LOADERS.get(path.suffix.lower())
    if entry is None:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        kind = repr(path.suffix) if path.suffix else "(no suffix)"
        raise DocumentError(f"{path}: unsupported file type {kind}; "
                            f"supported: {supported}; convert it to one of them")
    module, function = entry
    try:
        return getattr(importlib.import_module(f"luodi.kb.ingest.{module}"), function)
    except ImportError as exc:
        raise _missing_dependency(path, exc) from exc


def _missing_dependency(path: Path, exc: ImportError) -> LuodiError:
    name = (exc.name or "").split(".")[0]
    package = _DISTRIBUTIONS.get(name, name) or "an optional dependency"
    return LuodiError(f"reading {path.name} needs the {package!r} package, which is not "
                      f"installed: {INSTALL_HINT}")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "no details"
