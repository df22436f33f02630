"""Character cards: import and export of V1 / V2 / V3 JSON and PNG, checked against `tavern-card`
(an independent reader and writer of the same formats); every field survives a round trip."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from cards_data import V1, V2, V3

from luodi.apps.cards import CardError, card_from_json, card_to_png, read_card, write_card

tavern_card = pytest.importorskip("tavern_card")

KNOWN = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes",
         "system_prompt", "post_history_instructions", "alternate_greetings", "tags", "creator",
         "character_version", "extensions", "character_book")


def known_fields(data: dict) -> dict:
    return {k: data[k] for k in KNOWN if k in data}


def png_text_chunks(blob: bytes) -> dict[str, bytes]:
    chunks, offset = {}, 8
    while offset < len(blob):
        (length,) = struct.unpack(">I", blob[offset:offset + 4])
        kind, body = blob[offset + 4:offset + 8], blob[offset + 8:offset + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            chunks[key.decode()] = value
        offset += 12 + length
    return chunks


@pytest.mark.parametrize("card", [V2, V3], ids=["v2", "v3"])
def test_json_export_reads_back_in_tavern_card_and_keeps_unknown_fields(tmp_path, card):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(card, ensure_ascii=False))
    out = write_card(read_card(source), tmp_path / "out.json")
    exported = json.loads(out.read_text())
    assert exported == card  # every field, unknown ones included
    theirs = tavern_card.parse_card(exported)
    assert theirs["spec"] == card["spec"]
    assert theirs["data"] == tavern_card.parse_card(card)["data"]


@pytest.mark.parametrize("card", [V2, V3], ids=["v2", "v3"])
def test_png_export_reads_back_in_tavern_card(tmp_path, card):
    out = write_card(card_from_json(card), tmp_path / "out.png")
    theirs = tavern_card.parse_png_card(out.read_bytes())
    assert known_fields(theirs["data"]) == known_fields(tavern_card.parse_card(card)["data"])
    assert theirs["spec"] == card["spec"]  # a V3 card is read from its ccv3 chunk
    ours = read_card(out)
    assert ours.to_json() == card


def test_v3_png_has_a_v2_chara_chunk_too(tmp_path):
    chunks = png_text_chunks(card_to_png(card_from_json(V3)))
    assert set(chunks) == {"chara", "ccv3"}
    v2 = json.loads(base64.b64decode(chunks["chara"]))
    assert v2["spec"] == "chara_card_v2" and v2["data"]["name"] == "Mira3"


def test_tavern_card_png_reads_in_luodi(tmp_path):
    theirs = tavern_card.parse_card(V2)
    path = tmp_path / "theirs.png"
    path.write_bytes(tavern_card.write_png_card(theirs))
    assert read_card(path).to_json() == theirs


def test_png_image_is_kept_and_old_card_replaced(tmp_path):
    path = tmp_path / "theirs.png"
    path.write_bytes(tavern_card.write_png_card(tavern_card.parse_card(V2)))
    card = read_card(path)
    card.data["description"] = "changed"
    blob = card_to_png(card)
    assert list(png_text_chunks(blob)) == ["chara"]  # replaced, not duplicated
    assert tavern_card.parse_png_card(blob)["data"]["description"] == "changed"
    image = [c for c in (b"IHDR", b"IDAT") if c in path.read_bytes()]
    assert all(c in blob for c in image)


def test_v1_card_imports_as_tavern_card_normalizes_it(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(V1))
    card = read_card(path)
    theirs = tavern_card.parse_card(V1)["data"]
    for key in ("name", "description", "personality", "scenario", "first_mes", "mes_example"):
        assert card.data[key] == theirs[key]
    exported = json.loads(write_card(card, tmp_path / "v1-out.json").read_text())
    assert exported["spec"] == "chara_card_v2" and exported["data"]["x_v1_extra"] == "kept"
    assert tavern_card.parse_card(exported)["data"]["description"] == "A retired sailor."


def _png_with(chunks: list[tuple[bytes, bytes]]) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(chunk(k, b) for k, b in chunks) + chunk(b"IEND", b"")


def test_ztxt_card_chunk_reads(tmp_path):
    payload = base64.b64encode(json.dumps(V2).encode())
    path = tmp_path / "z.png"
    path.write_bytes(_png_with([(b"zTXt", b"chara\0\0" + zlib.compress(payload))]))
    ours = read_card(path).to_json()
    assert ours == V2
    assert known_fields(ours["data"]) == known_fields(tavern_card.parse_png_card(path.read_bytes())["data"])


def _corrupt_crc(tmp_path):
    blob = bytearray(card_to_png(card_from_json(V2)))
    blob[40] ^= 0xFF
    return bytes(blob)


@pytest.mark.parametrize(("blob", "needle"), [
    (lambda p: card_to_png(card_from_json(V2))[:200], "corrupt PNG"),
    (_corrupt_crc, "bad checksum"),
    (lambda p: _png_with([]), "no character card"),
    (lambda p: _png_with([(b"tEXt", b"chara\0not base64!!")]), "not base64"),
    (lambda p: _png_with([(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * (64 * 2**20)))]), "inflates past"),
    (lambda p: b"{not json", "neither a PNG card nor JSON"),
    (lambda p: json.dumps({"spec": "chara_card_v9", "data": {}}).encode(), "unknown card spec"),
    (lambda p: json.dumps({"spec": "chara_card_v2", "data": {"name": ""}}).encode(), "no 'name'"),
    (lambda p: json.dumps({"name": "X", "description": 3}).encode(), "'description' must be text"),
    (lambda p: json.dumps([1, 2]).encode(), "JSON object"),
], ids=["truncated", "crc", "no-chunk", "bad-base64", "zip-bomb", "bad-json", "bad-spec", "no-name", "bad-field",
        "not-object"])
def test_bad_cards_are_clear_errors(tmp_path, blob, needle):
    path = tmp_path / "bad.png"
    path.write_bytes(blob(tmp_path))
    with pytest.raises(CardError, match=needle):
        read_card(path)


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.png"
    with path.open("wb") as f:
        f.truncate(50 * 2**20)
    with pytest.raises(CardError, match="too large"):
        read_card(path)


def test_export_needs_a_known_suffix_and_leaves_no_partial_file(tmp_path):
    with pytest.raises(CardError, match="use .json or .png"):
        write_card(card_from_json(V2), tmp_path / "card.txt")
    assert list(tmp_path.iterdir()) == []
