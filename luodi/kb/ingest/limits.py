"""How much one document may cost to read: the ingestion limits, and the budget that enforces them.

Owns `IngestLimits` (the configured ceilings: zip members and their inflated sizes, image pixels,
PDF pages, pages to OCR, rasterized page area, seconds per document), the per-document
`IngestBudget` (the deadline, the OCR page count and the caller's cancellation flag, checked by
the loaders between pages and OCR calls), and the checks every decoder makes *before* it
allocates: a zip container's members inflated in a counting stream, an image's pixel count read
from its header. A refusal is an `IngestLimitError` naming the limit and the value; a cancelled
ingestion is an `IngestCancelledError`.

Knows nothing about chunking, embedding or storage, and nothing of any format beyond zip
containers and image headers.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
import time
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luodi.errors import DocumentError, InvalidParameterError, LuodiError

# A member this small is never refused for its compression ratio: short, repetitive XML parts
# (styles, settings) legitimately compress far better than the document body.
RATIO_GRACE_BYTES = 1 << 20
_READ_BYTES = 1 << 20  # inflated bytes per read while counting a zip member
_END_RECORD = b"PK\x05\x06"
_END_RECORD_SIZE = 22
_MAX_COMMENT = 0xFFFF


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Ceilings on what one document may make Luodi allocate or spend; each can be raised."""

    max_zip_members: int = 10_000  # entries in a zip container (.docx)
    max_unzipped_member_bytes: int = 64 * 2**20  # one zip member, inflated
    max_unzipped_bytes: int = 256 * 2**20  # all zip members together, inflated
    max_zip_ratio: int = 100  # inflated / compressed size of a member over 1 MiB
    max_image_pixels: int = 40_000_000  # width × height of an image file (PIL refuses ~179 M)
    max_pdf_pages: int = 2_000
    max_ocr_pages: int = 100  # pages of one PDF without a usable text layer
    max_page_pixels: int = 4_000_000  # a PDF page rasterized for OCR (2000 × 2000)
    max_document_seconds: float = 300.0  # reading, OCR and embedding of one document

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise InvalidParameterError(f"ingestion limit {field.name}={value} must be > 0",
                                            param=field.name)

    def with_overrides(self, settings: Iterable[str]) -> IngestLimits:
        """These limits with `NAME=VALUE` settings applied (as the CLI's `--ingest-limit` gives them)."""
        types = {field.name: field.type for field in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for setting in settings:
            name, _, text = setting.partition("=")
            name = name.strip().replace("-", "_")
            if name not in types:
                raise InvalidParameterError(
                    f"unknown ingestion limit {name!r} in {setting!r}; known: {', '.join(types)}",
                    param="ingest_limit")
            changes[name] = _parse_number(setting, text, float if types[name] == "float" else int)
        return dataclasses.replace(self, **changes)


def _parse_number(setting: str, text: str, kind: type) -> int | float:
    try:
        return kind(text.replace("_", ""))
    except ValueError:
        raise InvalidParameterError(
            f"ingestion limit {setting!r} is not NAME={'NUMBER' if kind is float else 'INTEGER'} "
            "(e.g. max_ocr_pages=200)", param="ingest_limit") from None


DEFAULT_LIMITS = IngestLimits()


class IngestLimitError(DocumentError):
    """A document over one of the ingestion limits; the message names the limit and the value."""


class IngestTimeLimitError(IngestLimitError):
    """A document that took longer than `max_document_seconds` to read, OCR and embed."""


class IngestCancelledError(LuodiError):
    """The caller gave up on the ingestion (a client that went away, a server shutting down)."""


def limit_error(name: str, what: str, value: float, limits: IngestLimits, limit: str,
                error: type[IngestLimitError] = IngestLimitError) -> IngestLimitError:
    """`NAME: WHAT is VALUE, over the ingestion limit LIMIT=N; ...` as `error`."""
    return error(f"{name}: {what} is {_number(value)}, over the ingestion limit "
                 f"{limit}={_number(getattr(limits, limit))}; split or shrink the document, or raise "
                 f"the limit (--ingest-limit {limit}=N) if you trust it")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class IngestBudget:
    """One document's budget: its limits, deadline, OCR page count and cancellation flag.

    Loaders call `check()` between pages and before each OCR call; it raises once the caller
    has cancelled or the document's time is up. `pages_read` says how far a loader got (for
    progress reports)."""

    def __init__(self, limits: IngestLimits = DEFAULT_LIMITS, cancel: threading.Event | None = None,
                 name: str = "document") -> None:
        self.limits = limits
        self.name = name
        self._cancel = cancel if cancel is not None else threading.Event()
        self._start = time.monotonic()
        self.pages_read = 0
        self.ocr_pages = 0

    def cancel(self) -> None:
        self._cancel.set()

    def check(self) -> None:
        """Raise if the caller cancelled or the document's time is up; else return at once."""
        if self._cancel.is_set():
            raise IngestCancelledError(f"{self.name}: ingestion cancelled; nothing was stored")
        elapsed = time.monotonic() - self._start
        if elapsed > self.limits.max_document_seconds:
            raise limit_error(self.name, "the time spent reading it (seconds)",
                              round(elapsed, 1), self.limits, "max_document_seconds", IngestTimeLimitError)

    def page_read(self) -> None:
        self.pages_read += 1
        self.check()

    def before_ocr(self) -> None:
        """Count one OCR call (a PDF page or an image) against `max_ocr_pages`, then `check()`."""
        self.ocr_pages += 1
        if self.ocr_pages > self.limits.max_ocr_pages:
            raise limit_error(self.name, "the number of pages to OCR", self.ocr_pages, self.limits, "max_ocr_pages")
        self.check()


# ---- zip containers ------------------------------------------------------------------------------

def check_zip(path: Path, budget: IngestBudget) -> None:
    """Refuse a zip container whose members would inflate past the limits, before any reader opens
    it: the entry count from the end record, each member's declared sizes and ratio, then each
    member actually inflated in a counting stream (declared sizes can lie) with nothing kept."""
    limits, name = budget.limits, budget.name
    entries = _declared_entries(path)
    if entries is not None and entries > limits.max_zip_members:
        raise limit_error(name, "the number of zip members", entries, limits, "max_zip_members")
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > limits.max_zip_members:
            raise limit_error(name, "the number of zip members", len(members), limits, "max_zip_members")
        for member in members:
            _check_declared(name, member, limits)
        _check_total(name, sum(m.file_size for m in members), limits)
        total = 0
        for member in members:
            total += _inflated_size(archive, member, limits, total, name)
            budget.check()


def _declared_entries(path: Path) -> int | None:
    """The entry count in the zip's end record (None if there is none: not a zip, which the
    reader will say). Read first because opening the archive parses every entry."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - _END_RECORD_SIZE - _MAX_COMMENT))
        tail = fh.read()
    at = tail.rfind(_END_RECORD)
    if at < 0 or len(tail) - at < _END_RECORD_SIZE:
        return None
    return struct.unpack_from("<H", tail, at + 10)[0]  # total entries in the central directory


def _check_declared(name: str, member: zipfile.ZipInfo, limits: IngestLimits) -> None:
    if member.file_size > limits.max_unzipped_member_bytes:
        raise limit_error(name, f"zip member {member.filename!r} inflated (bytes, declared)",
                          member.file_size, limits, "max_unzipped_member_bytes")
    if member.file_size > RATIO_GRACE_BYTES and member.file_size > limits.max_zip_ratio * max(1, member.compress_size):
        raise limit_error(name, f"the compression ratio of zip member {member.filename!r}",
                          round(member.file_size / max(1, member.compress_size)), limits, "max_zip_ratio")


def _check_total(name: str, total: int, limits: IngestLimits) -> None:
    if total > limits.max_unzipped_bytes:
        raise limit_error(name, "all zip members inflated (bytes)", total, limits, "max_unzipped_bytes")


def _inflated_size(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limits: IngestLimits,
                   before: int, name: str) -> int:
    """Bytes `member` really inflates to, counted in 1 MiB reads and refused at the first read
    past a limit: at most one read is ever held."""
    size = 0
    with archive.open(member) as stream:
        while chunk := stream.read(_READ_BYTES):
            size += len(chunk)
            if size > limits.max_unzipped_member_bytes:
                raise limit_error(name, f"zip member {member.filename!r} inflated (bytes, at least)",
                                  size, limits, "max_unzipped_member_bytes")
            if size > RATIO_GRACE_BYTES and size > limits.max_zip_ratio * max(1, member.compress_size):
                raise limit_error(name, f"the compression ratio of zip member {member.filename!r} (at least)",
                                  round(size / max(1, member.compress_size)), limits, "max_zip_ratio")
            _check_total(name, before + size, limits)
    return size


# ---- images --------------------------------------------------------------------------------------

def check_image_pixels(image: Any, budget: IngestBudget) -> None:
    """Refuse an opened (not yet decoded) PIL image whose header declares too many pixels."""
    width, height = image.size
    if width * height > budget.limits.max_image_pixels:
        raise limit_error(budget.name, f"the image size in pixels ({width} x {height})",
                          width * height, budget.limits, "max_image_pixels")


def open_image(path: Path, budget: IngestBudget) -> Any:
    """The image at `path` opened lazily (header read, pixels not decoded) and checked against
    `max_image_pixels`. PIL's own bomb check, far above ours, only warns or refuses first."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError:
            raise limit_error(budget.name, "the image size in pixels (more than)",
                              2 * (Image.MAX_IMAGE_PIXELS or 0), budget.limits,
                              "max_image_pixels") from None
    try:
        check_image_pixels(image, budget)
    except IngestLimitError:
        image.close()
        raise
    return image
