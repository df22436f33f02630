"""Writers of hostile test documents: small files that would make a naive reader allocate or work
without bound. Each `write_*` writes one file at `path` and returns `path`; none needs a font.

- `write_docx_bomb`: a real .docx whose word/document.xml inflates to `inflated` bytes (~1000x);
- `write_png_bomb`: a PNG declaring `width` x `height` pixels, tens of KB on disk;
- `write_blank_pdf`: `pages` blank pages (no text layer: every page is one to OCR);
- `write_page_tree_bomb`: ~1 KB of PDF whose page tree lists one blank page fanout² times.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

_BODY_START = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
               b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
               b"<w:body><w:p><w:r><w:t>")
_BODY_END = b"</w:t></w:r></w:p></w:body></w:document>"


def write_docx_bomb(path: Path, inflated: int = 2**30) -> Path:
    """python-docx's own blank document with word/document.xml replaced by one paragraph of
    `inflated` bytes of "A" (compressed, about a thousandth of that)."""
    import docx

    template = path.with_suffix(".template.docx")
    docx.Document().save(str(template))
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        for member in source.infolist():
            if member.filename == "word/document.xml":
                _write_repeated(bomb, member.filename, inflated)
            else:
                bomb.writestr(member, source.read(member))
    template.unlink()
    return path


def _write_repeated(archive: zipfile.ZipFile, name: str, size: int) -> None:
    block = b"A" * 2**20
    with archive.open(name, "w", force_zip64=True) as member:
        member.write(_BODY_START)
        for _ in range(size // len(block)):
            member.write(block)
        member.write(_BODY_END)


def write_zip_with_members(path: Path, count: int) -> Path:
    """A .docx-named zip of `count` empty members."""
    with zipfile.ZipFile(path, "w") as archive:
        for n in range(count):
            archive.writestr(f"junk/{n}.xml", b"")
    return path


def write_png_bomb(path: Path, width: int = 12_000, height: int = 12_000) -> Path:
    """A valid 1-bit grayscale PNG of `width` x `height` white pixels: a few tens of KB on disk,
    width x height bytes once PIL decodes it (three times that as RGB)."""
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter type 0, then the packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


def write_blank_pdf(path: Path, pages: int, size: tuple[float, float] = (419.53, 595.28)) -> Path:
    """`pages` blank A5 pages sharing one (empty) content: no text layer anywhere."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(*size)
    writer.compress_identical_objects()
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def write_page_tree_bomb(path: Path, fanout: int = 71) -> Path:
    """A hand-written PDF of about 1 KB: the root lists one page-tree node `fanout` times, which
    lists one blank page `fanout` times, so readers see fanout² (5041) pages to OCR."""
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(['3 0 R'] * fanout)}] /Count {fanout * fanout} >>",
        f"<< /Type /Pages /Parent 2 0 R /Kids [{' '.join(['4 0 R'] * fanout)}] /Count {fanout} >>",
        "<< /Type /Page /Parent 3 0 R /MediaBox [0 0 420 595] >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path
