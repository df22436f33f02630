"""`luodi persona CARD`: export round trip, the printed prompt, JSON turns, one-line errors for bad cards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_cli import SMOLLM2, assert_one_line_error, luodi

from model_cache import pulled_model_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "apps"))
from cards_data import V2  # noqa: E402

tavern_card = pytest.importorskip("tavern_card")


@pytest.fixture(scope="module")
def model() -> str:
    return str(pulled_model_path(SMOLLM2))


@pytest.fixture
def card(tmp_path) -> Path:
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(V2, ensure_ascii=False))
    return path


def test_export_png_then_json_keeps_everything(card, tmp_path):
    png, back = tmp_path / "mira.png", tmp_path / "back.json"
    assert luodi("persona", str(card), "--export", str(png)).returncode == 0
    assert tavern_card.parse_png_card(png.read_bytes())["data"]["name"] == "Mira"
    result = luodi("persona", str(png), "--export", str(back))
    assert result.returncode == 0, result.stderr
    assert json.loads(back.read_text()) == V2


def test_print_prompt_shows_lore_for_its_key_only(card, model):
    with_key = luodi("persona", str(card), "-m", model, "--user", "Ann", "--print-prompt", stdin="Is the lamp lit?")
    without = luodi("persona", str(card), "-m", model, "--print-prompt", stdin="Good evening.")
    assert with_key.returncode == 0 and without.returncode == 0, with_key.stderr + without.stderr
    assert "Fresnel lens" in with_key.stdout and "Fresnel lens" not in without.stdout
    assert "Get in, Ann," in with_key.stdout and with_key.stdout.rstrip().endswith("<|im_start|>assistant")


def test_json_turns(card, model):
    result = luodi("persona", str(card), "-m", model, "--json", "-t", "0", "-n", "12",
                   stdin="Who are you?\nAnd the lamp?\n")
    assert result.returncode == 0, result.stderr
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(turns) == 2 and all(set(t) == {"reply", "prompt_tokens", "ttft_s"} for t in turns)
    assert turns[1]["prompt_tokens"] > turns[0]["prompt_tokens"]  # the history grows


@pytest.mark.parametrize(("content", "name", "needles"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "bad.png", ("corrupt PNG",)),
    (b"{", "bad.json", ("neither a PNG card nor JSON",)),
    (None, "missing.json", ("cannot read the card",)),
])
def test_bad_cards_are_one_line_errors(tmp_path, content, name, needles):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert_one_line_error(luodi("persona", str(path), "--print-prompt", stdin="hi"), *needles)


def test_big_file_and_bad_export_suffix(tmp_path, card):
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(50 * 2**20)
    assert_one_line_error(luodi("persona", str(big), "--export", str(tmp_path / "x.json")), "too large")
    assert_one_line_error(luodi("persona", str(card), "--export", str(tmp_path / "x.txt")), "use .json or .png")
