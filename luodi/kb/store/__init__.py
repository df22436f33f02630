"""Where knowledge bases live: `open_store` picks the Store for a location.

`None` is the embedded default (one SQLite file per knowledge base under `luodi_home()/kb`); a
`postgresql://` URL is a PostgreSQL server with pgvector. The backends are imported lazily, so
neither apsw nor psycopg is needed until used. This module also holds what both backends share:
the knowledge-base name rule and the user-facing error messages.
"""

from __future__ import annotations

import re

from luodi.errors import (
    InvalidParameterError,
    KnowledgeBaseError,
    KnowledgeBaseExistsError,
    KnowledgeBaseNotFoundError,
)
from luodi.kb.store.base import DocumentInfo, KnowledgeBaseInfo, Store
from luodi.paths import luodi_home

__all__ = ["DocumentInfo", "KnowledgeBaseInfo", "Store", "check_name", "check_text", "open_store"]

# Letters (any script), digits, '_' and '-': safe as a file name and in messages; no '/', no '.'.
_NAME = re.compile(r"[^\W_][\w-]{0,63}")


def open_store(location: str | None = None) -> Store:
    """The store at `location`: None → SQLite under luodi_home()/kb; postgresql://... → PostgreSQL."""
    if location is None:
        from luodi.kb.store.sqlite import SqliteStore

        return SqliteStore(luodi_home() / "kb")
    if location.startswith(("postgresql://", "postgres://")):
        from luodi.kb.store.postgres import PostgresStore

        return PostgresStore(location)
    raise KnowledgeBaseError(
        f"unsupported knowledge-base store {location!r}: leave it unset for the embedded SQLite "
        "store, or give a postgresql://user@host/db URL")


def check_name(name: str) -> str:
    """`name` if it is a valid knowledge-base name, else `KnowledgeBaseError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KnowledgeBaseError(
            f"invalid knowledge base name {name!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit")
    return name


def check_text(text: str, what: str, param: str) -> str:
    """`text` if it is valid Unicode, else `InvalidParameterError`: a lone surrogate (a JSON
    "\\ud800" escape, or a command-line argument or file name that is not UTF-8) cannot be stored,
    indexed or embedded. `what` names the value in the message ("query", "document name")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidParameterError(
            f"the {what} is not valid Unicode: character {err.start} of {len(text)} is the lone "
            f"surrogate {text[err.start]!r}; send UTF-8 text",
            param=param) from None
    return text


def unknown_kb(name: str) -> KnowledgeBaseNotFoundError:
    """The one error for a knowledge base that is missing *or* belongs to another owner."""
    return KnowledgeBaseNotFoundError(
        f'unknown knowledge base "{name}": create it first with `luodi kb create {name}`')


def kb_exists(name: str) -> KnowledgeBaseExistsError:
    return KnowledgeBaseExistsError(f'knowledge base "{name}" already exists: choose another name')


def check_vectors(name: str, info_dim: int, embedder: str, width: int) -> None:
    if width != info_dim:
        raise KnowledgeBaseError(
            f'vectors are {width}-dimensional but knowledge base "{name}" holds {info_dim}-dimensional '
            f'vectors from embedder "{embedder}": embed with "{embedder}"')
