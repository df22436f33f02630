"""Readers: input files and folders → documents, in a fixed order.

Owns the input formats — JSONL (a `text` field, configurable; `id` as given, else file:line;
the other fields are metadata), plain-text files (one document each, id = the path below the
folder given), HTML (main text through the knowledge base's trafilatura loader), Parquet (when
pyarrow is installed) — and reporting bad input as `ReadError`s that name the file and line
while reading goes on. Folders are walked in sorted order so a run is repeatable.
Knows nothing about steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from luodi.corpus.document import Document

SUFFIXES = (".jsonl", ".txt", ".md", ".html", ".htm", ".parquet")


@dataclass(frozen=True, slots=True)
class ReadError:
    """Input that could not become a document: where (file, line if any) and why."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


def read_inputs(inputs: list[Path], text_field: str = "text", id_field: str = "id") -> Iterator[Document | ReadError]:
    """Every document of every input, in order; a folder's files sorted by path."""
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            for file in files:
                yield from read_file(file, file.relative_to(path).as_posix(), text_field, id_field)
        elif path.is_file():
            yield from read_file(path, path.name, text_field, id_field)
        else:
            yield ReadError(str(path), None, "no such file or folder; check the path")


def read_file(path: Path, name: str, text_field: str, id_field: str) -> Iterator[Document | ReadError]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from read_jsonl(path, text_field, id_field)
        elif suffix == ".parquet":
            yield from read_parquet(path, text_field, id_field)
        elif suffix in (".html", ".htm"):
            yield Document(id=name, text=read_html(path), metadata={"source": str(path)})
        elif suffix in (".txt", ".md"):
            yield Document(id=name, text=path.read_text(encoding="utf-8"), metadata={"source": str(path)})
        else:
            yield ReadError(str(path), None, f"unsupported file type {suffix!r}; supported: {', '.join(SUFFIXES)}")
    except UnicodeDecodeError as exc:
        yield ReadError(str(path), None, f"not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8")
    except OSError as exc:
        yield ReadError(str(path), None, f"cannot read ({exc.strerror or exc}); check that it exists and is readable")


def read_jsonl(path: Path, text_field: str, id_field: str) -> Iterator[Document | ReadError]:
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            yield _json_document(path, number, raw, text_field, id_field)


def _json_document(path: Path, number: int, raw: bytes, text_field: str, id_field: str) -> Document | ReadError:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return ReadError(str(path), number, f"bad JSON ({exc}); each line must be one JSON object")
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        return ReadError(str(path), number, f"no string field {text_field!r}; each line needs one "
                                            "(or name the field with the recipe's text_field)")
    text = record.pop(text_field)
    doc_id = record.pop(id_field, None)
    return Document(id=str(doc_id) if doc_id is not None else f"{path.name}:{number}", text=text, metadata=record)


def read_parquet(path: Path, text_field: str, id_field: str) -> Iterator[Document | ReadError]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        yield ReadError(str(path), None, "reading Parquet needs pyarrow: pip install pyarrow")
        return
    row = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for record in batch.to_pylist():
            row += 1
            text = record.pop(text_field, None)
            if not isinstance(text, str):
                yield ReadError(str(path), row, f"no string field {text_field!r} in this row")
                continue
            doc_id = record.pop(id_field, None)
            yield Document(id=str(doc_id) if doc_id is not None else f"{path.name}:{row}", text=text,
                           metadata={k: v for k, v in record.items() if _is_json(v)})


def read_html(path: Path) -> str:
    from luodi.kb.ingest.html import main_blocks

    return "\n\n".join(block.text for block in main_blocks(path.read_bytes()))


def _is_json(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
