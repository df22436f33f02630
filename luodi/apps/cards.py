"""Character cards: reading and writing V1 / V2 / V3 cards as JSON or PNG.

Owns the card file formats (the community "Tavern" card specs): a V1 card is a flat JSON object; V2
(`chara_card_v2`) and V3 (`chara_card_v3`) wrap the fields in `data`. A PNG card carries the JSON,
base64-encoded, in a text chunk keyed `chara` (V2) or `ccv3` (V3; preferred when both are there).
Everything a card holds survives import and export, fields Luodi does not know included; a PNG's
image is kept and only its card chunks are replaced.

Must not know: prompts, models, the engine.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luodi.errors import LuodiError

MAX_CARD_BYTES = 20 * 2**20  # a card with an avatar is well under a few MB; this bounds a hostile file
_MAX_TEXT_BYTES = 8 * 2**20  # a compressed text chunk inflates to at most this (zip-bomb guard)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CARD_KEYS = ("ccv3", "chara")
V2_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes",
             "system_prompt", "post_history_instructions", "alternate_greetings", "character_book", "tags",
             "creator", "character_version", "extensions")
_V1_ALIASES = {"char_name": "name", "char_persona": "description", "world_scenario": "scenario",
               "char_greeting": "first_mes", "example_dialogue": "mes_example"}


class CardError(LuodiError):
    """A character card file that cannot be read or written."""


@dataclass(slots=True)
class Card:
    """A card's fields (`data`, V2/V3 names, unknown ones kept) and its envelope."""

    data: dict[str, Any]
    spec: str = "chara_card_v2"  # chara_card_v2 or chara_card_v3; a V1 card is exported as V2
    spec_version: str = "2.0"
    envelope: dict[str, Any] = field(default_factory=dict)  # other top-level keys, kept for export
    image: bytes | None = None  # the PNG the card came in, if any

    @property
    def name(self) -> str:
        return str(self.data.get("name") or "")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        return value if isinstance(value, str) else ""

    def to_json(self) -> dict[str, Any]:
        return {**copy.deepcopy(self.envelope), "spec": self.spec, "spec_version": self.spec_version,
                "data": copy.deepcopy(self.data)}

    def to_v2_json(self) -> dict[str, Any]:
        """The V2 form a V2-only reader understands (written beside `ccv3` in a V3 PNG)."""
        return {**self.to_json(), "spec": "chara_card_v2", "spec_version": "2.0"}


def card_from_json(obj: Any, source: str = "card") -> Card:
    """A `Card` from parsed JSON of any version; `CardError` naming what is wrong."""
    if not isinstance(obj, dict):
        raise CardError(f"{source}: a character card is a JSON object, got {type(obj).__name__}")
    spec = obj.get("spec")
    if spec in ("chara_card_v2", "chara_card_v3"):
        data = obj.get("data")
        if not isinstance(data, dict):
            raise CardError(f"{source}: a {spec} card needs a 'data' object")
        envelope = {k: v for k, v in obj.items() if k not in ("spec", "spec_version", "data")}
        default_version = "3.0" if spec == "chara_card_v3" else "2.0"
        card = Card(copy.deepcopy(data), spec, str(obj.get("spec_version") or default_version), envelope)
    elif spec is None:  # V1: the fields at the top level
        data = {_V1_ALIASES.get(k, k): v for k, v in obj.items()}
        card = Card(data)
    else:
        raise CardError(f"{source}: unknown card spec {spec!r}; expected chara_card_v2, chara_card_v3 or a V1 card")
    _check_fields(card, source)
    return card


def _check_fields(card: Card, source: str) -> None:
    if not card.name.strip():
        raise CardError(f"{source}: the card has no 'name'")
    for key in ("description", "personality", "scenario", "first_mes", "mes_example", "system_prompt",
                "post_history_instructions"):
        if card.data.get(key) is not None and not isinstance(card.data[key], str):
            raise CardError(f"{source}: field {key!r} must be text, got {type(card.data[key]).__name__}")
    greetings = card.data.get("alternate_greetings")
    if greetings is not None and not (isinstance(greetings, list) and all(isinstance(g, str) for g in greetings)):
        raise CardError(f"{source}: 'alternate_greetings' must be a list of strings")
    book = card.data.get("character_book")
    if book is not None and not (isinstance(book, dict) and isinstance(book.get("entries", []), list)):
        raise CardError(f"{source}: 'character_book' must be an object with an 'entries' list")


def read_card(path: str | Path) -> Card:
    """Read a card from a .json or .png file."""
    path = Path(path)
    return card_from_bytes(_read_bounded(path), str(path))


def card_from_bytes(blob: bytes, source: str = "card") -> Card:
    """A card from a file's bytes: a PNG card, or JSON; too large, corrupt or not a card is a `CardError`."""
    _check_size(len(blob), source)
    if blob.startswith(PNG_SIGNATURE):
        return card_from_png(blob, source)
    try:
        obj = json.loads(blob.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CardError(f"{source}: neither a PNG card nor JSON ({exc})") from exc
    return card_from_json(obj, source)


def _check_size(size: int, source: str) -> None:
    if size > MAX_CARD_BYTES:
        raise CardError(f"{source}: {size / 2**20:.1f} MB is too large for a character card "
                        f"(at most {MAX_CARD_BYTES // 2**20} MB)")


def _read_bounded(path: Path) -> bytes:
    try:
        _check_size(path.stat().st_size, str(path))
        return path.read_bytes()
    except IsADirectoryError as exc:
        raise CardError(f"{path} is a directory; give a card file (.json or .png)") from exc
    except OSError as exc:
        raise CardError(f"{path}: cannot read the card ({exc.strerror})") from exc


def card_from_png(blob: bytes, source: str = "card.png") -> Card:
    texts = _png_text_chunks(blob, source)
    for key in _CARD_KEYS:
        if key in texts:
            card = card_from_json(_decode_payload(texts[key], source, key), source)
            card.image = blob
            return card
    raise CardError(f"{source}: the PNG holds no character card (no 'chara' or 'ccv3' text chunk)")


def _decode_payload(payload: bytes, source: str, key: str) -> Any:
    try:
        text = base64.b64decode(payload.strip(), validate=True).decode("utf-8")
        return json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise CardError(f"{source}: the PNG's {key!r} chunk is not base64-encoded card JSON ({exc})") from exc


def _png_chunks(blob: bytes, source: str):
    """(type, body) of each chunk, checking lengths and CRCs: a corrupt file is an error, not a guess."""
    offset = len(PNG_SIGNATURE)
    while offset < len(blob):
        if offset + 8 > len(blob):
            raise CardError(f"{source}: corrupt PNG (truncated chunk header at byte {offset})")
        length, kind = struct.unpack(">I4s", blob[offset:offset + 8])
        end = offset + 12 + length
        if end > len(blob):
            raise CardError(f"{source}: corrupt PNG (chunk {kind!r} runs past the end of the file)")
        body = blob[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", blob[end - 4:end])
        if zlib.crc32(kind + body) != crc:
            raise CardError(f"{source}: corrupt PNG (bad checksum in chunk {kind.decode('latin-1')!r})")
        yield kind, body, offset, end
        offset = end
        if kind == b"IEND":
            return
    raise CardError(f"{source}: corrupt PNG (no IEND chunk)")


def _png_text_chunks(blob: bytes, source: str) -> dict[str, bytes]:
    texts: dict[str, bytes] = {}
    for kind, body, _, _ in _png_chunks(blob, source):
        if kind == b"tEXt":
            key, _, value = body.partition(b"\x00")
            texts[key.decode("latin-1")] = value
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            texts[key.decode("latin-1")] = _inflate(rest[1:], source)
        elif kind == b"iTXt":  # key, 0, compressed flag, method, language 0, translated key 0, text
            key, _, rest = body.partition(b"\x00")
            is_compressed = rest[:1] == b"\x01"
            value = rest[2:].split(b"\x00", 2)[-1]
            texts[key.decode("latin-1")] = _inflate(value, source) if is_compressed else value
    return texts


def _inflate(data: bytes, source: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, _MAX_TEXT_BYTES)
    except zlib.error as exc:
        raise CardError(f"{source}: corrupt PNG (a compressed text chunk does not inflate: {exc})") from exc
    if inflater.unconsumed_tail:
        raise CardError(f"{source}: a compressed text chunk inflates past {_MAX_TEXT_BYTES // 2**20} MB")
    return out


def card_to_png(card: Card) -> bytes:
    """The card's PNG (its own image, or a 1x1 one) with `chara` (V2 form) and, for V3, `ccv3`."""
    base = card.image if card.image is not None else _blank_png()
    kept = [(kind, body) for kind, body, _, _ in _png_chunks(base, "image")
            if not (kind in (b"tEXt", b"zTXt", b"iTXt") and body.partition(b"\x00")[0].decode("latin-1") in _CARD_KEYS)]
    texts = [(b"tEXt", b"chara\x00" + _encode_payload(card.to_v2_json()))]
    if card.spec == "chara_card_v3":
        texts.append((b"tEXt", b"ccv3\x00" + _encode_payload(card.to_json())))
    chunks = kept[:-1] + texts + kept[-1:]  # text chunks go before IEND
    return PNG_SIGNATURE + b"".join(_chunk(kind, body) for kind, body in chunks)


def _encode_payload(obj: dict[str, Any]) -> bytes:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode("utf-8"))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _blank_png() -> bytes:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    pixels = zlib.compress(b"\x00\x00\x00\x00\x00")  # filter byte + one transparent pixel
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def write_card(card: Card, path: str | Path) -> Path:
    """Write the card as .json or .png (by the suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        blob = (json.dumps(card.to_json(), ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    elif suffix == ".png":
        blob = card_to_png(card)
    else:
        raise CardError(f"--export {path}: unknown card format {suffix or '(none)'!r}; use .json or .png")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(blob)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CardError(f"{path}: cannot write the card ({exc.strerror})") from exc
    return path
