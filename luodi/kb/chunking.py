"""Chunking: a document's blocks → retrievable chunks that fit the embedder's token budget.

Structure first, tokens last. A heading starts a new chunk; a paragraph stays whole when it fits;
a paragraph too long for one chunk is cut at sentence ends (English `. ! ?` before a space;
Chinese `。！？；` and `……`; a line break), and only a sentence longer than a whole chunk is cut
inside, at a word or, failing that, a character. Consecutive chunks of one section share about
`overlap_tokens` worth of whole sentences, so a fact that straddles a cut is whole in one chunk.

The section title is written at the top of every chunk of its section ("Installation\\n\\nRun
pip ..."): a body rarely repeats the topic its heading names, and both BM25 and the vector need
it to find the chunk; the title's tokens count against the budget.

Tokens are whatever `count_tokens` says (the embedder's own tokenizer), summed over pieces; for
BERT WordPiece that sum is exact and for SentencePiece it errs high, so chunks stay in budget.
This module knows text and `Block`/`Chunk`; it must not know embedders, stores or files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from luodi.errors import InvalidParameterError
from luodi.kb.document import Block, Chunk

# ~200 tokens fits both embedders whole (MiniLM reads 256, e5 512) with room for the title, and a
# 5-chunk context stays near 1,000 tokens for a small model; 40 (20 %) is a sentence or two.
DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 40

PARAGRAPH_SEP = "\n\n"
# A sentence ends at: . ! ? (runs of them, then closing quotes/brackets) before whitespace;
# Chinese 。！？； or an ellipsis …… (no space needed after them, also with closers); a newline.
_SENTENCE_END = re.compile(
    r"[.!?]+[\"'”’)\]]*(?=\s)"
    r"|(?:[。！？；]+|……+)[\"'”’」』）)\]]*"
    r"|\n"
)
# Cut points inside an overlong sentence: each CJK character, or a run of other non-space text.
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_ATOM = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


@dataclass(frozen=True, slots=True)
class _Piece:
    """A sentence (or a cut of one): the unit chunks are packed from and overlap in."""

    text: str
    lead: str  # the whitespace that stood before it inside its paragraph ("" for the first)
    tokens: int
    paragraph: int  # index of its paragraph within the section, to rejoin with PARAGRAPH_SEP
    page: int | None


@dataclass(slots=True)
class _Section:
    title: str | None  # heading text(s) written at the top of each chunk
    name: str | None  # Chunk.section: the nearest heading
    page: int | None  # the heading's page
    paragraphs: list[Block]


def chunk_blocks(
    blocks: Sequence[Block],
    count_tokens: Callable[[str], int],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
) -> list[Chunk]:
    """Pack a document's blocks, in order, into chunks of at most ~`max_tokens` tokens.

    A chunk's `page` is where its text begins: its heading's page for a section's first chunk,
    else the page of its first sentence (an overlapped one included). `section` is the heading
    it falls under; where a loader marks no heading blocks, the blocks' own `section`.
    No chunk is empty and every non-blank piece of the input appears in some chunk.
    """
    _check_budget(max_tokens, overlap_tokens)
    chunks: list[Chunk] = []
    for section in _sections(blocks):
        for text, page in _chunk_section(section, count_tokens, max_tokens, overlap_tokens):
            chunks.append(Chunk(text=text, page=page, section=section.name, ordinal=len(chunks)))
    return chunks


def _check_budget(max_tokens: int, overlap_tokens: int) -> None:
    if max_tokens < 8:
        raise InvalidParameterError(
            f"max_tokens={max_tokens} is too small for a chunk; use at least 8 (default "
            f"{DEFAULT_MAX_TOKENS}), and no more than the embedder's max_tokens",
            param="max_tokens",
        )
    if not 0 <= overlap_tokens <= max_tokens // 2:
        raise InvalidParameterError(
            f"overlap_tokens={overlap_tokens} must be between 0 and half of max_tokens "
            f"({max_tokens // 2}); the default is {DEFAULT_OVERLAP_TOKENS}",
            param="overlap_tokens",
        )


def _sections(blocks: Sequence[Block]) -> list[_Section]:
    """Group blocks under their heading blocks; headings with nothing between them share one title.

    Where a loader marks no headings (only `Block.section`), a change of section starts one.
    """
    sections: list[_Section] = []
    current: _Section | None = None
    for block in blocks:
        text = block.text.strip()
        if not text:
            continue
        if block.heading:
            if current is not None and current.title is not None and not current.paragraphs:
                current.title, current.name = f"{current.title}\n{text}", text
            else:
                current = _Section(title=text, name=text, page=block.page, paragraphs=[])
                sections.append(current)
            continue
        if current is None or (current.title is None and block.section != current.name):
            current = _Section(title=None, name=block.section, page=block.page, paragraphs=[])
            sections.append(current)
        current.paragraphs.append(block)
    return sections


def _chunk_section(
    section: _Section, count_tokens: Callable[[str], int], max_tokens: int, overlap_tokens: int
) -> list[tuple[str, int | None]]:
    title, paragraphs = section.title, list(section.paragraphs)
    title_tokens = count_tokens(title) if title else 0
    if title is not None and title_tokens > max_tokens // 2:
        # A title that long would crowd out the body of every chunk: keep it once, as text.
        paragraphs.insert(0, Block(title, page=section.page))
        title, title_tokens = None, 0
    if not paragraphs:
        return [(title, section.page)] if title else []
    budget = max_tokens - title_tokens
    pieces = [_split_paragraph(b, i, count_tokens, budget) for i, b in enumerate(paragraphs)]
    out = [(_render(title, chunk), chunk[0].page) for chunk in _pack(pieces, budget, overlap_tokens)]
    if title:  # the first chunk begins where its heading stands
        out[0] = (out[0][0], section.page)
    return out


def _pack(paragraphs: list[list[_Piece]], budget: int, overlap_tokens: int) -> list[list[_Piece]]:
    """Greedy: whole paragraphs while they fit, else sentence by sentence; each new chunk of the
    section opens with the previous chunk's last sentences (up to `overlap_tokens`)."""
    chunks: list[list[_Piece]] = []
    current: list[_Piece] = []
    for para in paragraphs:
        para_tokens = _tokens(para)
        if _tokens(current) + para_tokens <= budget:
            current = current + para
        elif para_tokens <= budget:  # fits a chunk of its own: move it whole rather than cut it
            current = _next_chunk(chunks, current, budget - para_tokens, overlap_tokens) + para
        else:
            for piece in para:
                if _tokens(current) + piece.tokens > budget:
                    current = _next_chunk(chunks, current, budget - piece.tokens, overlap_tokens)
                current = current + [piece]
    if current:
        chunks.append(current)
    return chunks


def _next_chunk(
    chunks: list[list[_Piece]], current: list[_Piece], room: int, overlap_tokens: int
) -> list[_Piece]:
    """Close `current` and return the start of the next chunk: its overlap, within `room` tokens."""
    if not current:
        return []
    chunks.append(current)
    return _overlap_tail(current, min(overlap_tokens, room))


def _overlap_tail(chunk: list[_Piece], limit: int) -> list[_Piece]:
    """The longest run of whole pieces ending `chunk` that totals at most `limit` tokens.

    It is never all of `chunk`: the caller's `limit` is at most the budget less the next piece,
    which did not fit after `chunk`, so every chunk holds something its predecessor did not.
    """
    taken, total = 0, 0
    while taken < len(chunk) and total + chunk[-1 - taken].tokens <= limit:
        total += chunk[-1 - taken].tokens
        taken += 1
    return chunk[len(chunk) - taken :]


def _tokens(pieces: list[_Piece]) -> int:
    return sum(p.tokens for p in pieces)


def _render(title: str | None, pieces: list[_Piece]) -> str:
    parts = [pieces[0].text]
    for prev, piece in pairwise(pieces):
        parts.append(piece.lead if piece.paragraph == prev.paragraph else PARAGRAPH_SEP)
        parts.append(piece.text)
    body = "".join(parts)
    return f"{title}{PARAGRAPH_SEP}{body}" if title else body


# --- splitting --------------------------------------------------------------------------------


def _split_paragraph(
    block: Block, paragraph: int, count_tokens: Callable[[str], int], budget: int
) -> list[_Piece]:
    pieces = []
    for lead, sentence in split_sentences(block.text):
        tokens = count_tokens(sentence)
        if tokens <= budget:
            pieces.append(_Piece(sentence, lead, tokens, paragraph, block.page))
        else:
            cuts = _cut_sentence(lead, sentence, count_tokens, budget)
            pieces += [_Piece(text, gap, n, paragraph, block.page) for gap, text, n in cuts]
    return pieces


def _cut_sentence(
    lead: str, sentence: str, count_tokens: Callable[[str], int], budget: int
) -> list[tuple[str, str, int]]:
    """Last resort: cut at words (or CJK characters), a word longer than `budget` at characters.

    Each cut is the longest run of atoms that `count_tokens` puts within `budget` (binary search).
    """
    atoms: list[tuple[int, int]] = []
    for m in _ATOM.finditer(sentence):
        if count_tokens(m.group()) <= budget:
            atoms.append(m.span())
        else:
            atoms += [(i, i + 1) for i in range(m.start(), m.end())]
    cuts: list[tuple[int, int, int]] = []
    i = 0
    while i < len(atoms):
        lo, hi = i + 1, len(atoms)  # a cut holds one atom at least, so the loop always advances
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(sentence[atoms[i][0] : atoms[mid - 1][1]]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        start, end = atoms[i][0], atoms[lo - 1][1]
        cuts.append((start, end, count_tokens(sentence[start:end])))
        i = lo
    spans = _spans(sentence, ((start, end) for start, end, _ in cuts))
    leads = [lead] + [gap for gap, _ in spans[1:]]
    return [(gap, text, n) for gap, (_, text), (_, _, n) in zip(leads, spans, cuts, strict=True)]


def split_sentences(text: str) -> list[tuple[str, str]]:
    """`text` cut after each sentence end, as (whitespace before it, sentence) pairs.

    Joining `lead + sentence` over the pairs gives back `text.strip()` exactly.
    """
    cuts = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
    return _spans(text, pairwise(cuts))


def _spans(text: str, bounds: Iterable[tuple[int, int]]) -> list[tuple[str, str]]:
    """The non-blank spans of `text` within `bounds`, each with the whitespace before it."""
    out: list[tuple[str, str]] = []
    prev_end = None
    for start, end in bounds:
        span = text[start:end]
        body = span.strip()
        if not body:
            continue
        body_start = start + len(span) - len(span.lstrip())
        out.append((text[prev_end:body_start] if prev_end is not None else "", body))
        prev_end = body_start + len(body)
    return out
