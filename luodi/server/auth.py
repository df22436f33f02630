"""API keys: a keys file of salted hashes, key creation, and the bearer-token check.

A key is shown once, when `add_key` creates it; the file keeps only a random salt and
SHA-256(salt + key) per key, so a leaked file gives no working key. A fast hash is enough here
because keys are 256-bit random strings, not passwords: there is nothing to brute-force, and a
slow KDF would cost every request. Comparison is constant-time (`hmac.compare_digest`).

The file is JSON, written atomically with mode 0600, and re-read when it changes, so a key added
or removed while the server runs takes effect on the next request.

Each key also has an `id`, made at random when the key is added and never reused: what a key
owns (its knowledge bases) is keyed by the id, not the name, so a key removed and re-added under
the same name owns nothing of the old one's. Keys written before ids existed get a stable one on
read (their name, which already owned their knowledge bases; a derived id for a key named like
the local owner), kept in the file at its next rewrite. "local" — the owner of what the CLI and
a server without keys make — is never a key's name or id.

Must not know about HTTP frameworks: the middleware in `app.py` calls `KeyStore.identify`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from luodi.errors import LuodiError
from luodi.kb.store.base import LOCAL_OWNER
from luodi.paths import luodi_home, private_dir

KEY_PREFIX = "luodi-"
KEY_ID_PREFIX = "key-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class KeyFileError(LuodiError):
    """A keys file that is missing, unreadable, or not in Luodi's format; or a bad key name."""


def default_keys_file() -> Path:
    return luodi_home() / "api-keys.json"


@dataclass(frozen=True, slots=True)
class StoredKey:
    name: str
    salt: str  # hex
    sha256: str  # hex of SHA-256(salt bytes + key utf-8)
    hint: str  # the key's first characters, to tell keys apart in listings
    created: int  # unix seconds
    id: str  # what the key owns is keyed by this; random, never reused, never LOCAL_OWNER

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(_hash(bytes.fromhex(self.salt), key), self.sha256)


def _hash(salt: bytes, key: str) -> str:
    return hashlib.sha256(salt + key.encode("utf-8")).hexdigest()


def read_keys(path: Path) -> list[StoredKey]:
    """The keys in `path`; an absent file has none."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = [StoredKey(**{"id": _legacy_id(entry), **entry}) for entry in data["keys"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(
            f"cannot read API keys from {path}: {exc}; fix or delete the file, then add "
            "keys with `luodi keys add NAME`"
        ) from exc
    ids = [k.id for k in keys]
    if LOCAL_OWNER in ids or len(set(ids)) != len(ids) or not all(isinstance(i, str) and i for i in ids):
        raise KeyFileError(
            f"cannot read API keys from {path}: key ids must be distinct non-empty strings other "
            f"than {LOCAL_OWNER!r}; remove the edited entries, then add keys with `luodi keys add NAME`"
        )
    return keys


def _legacy_id(entry: dict[str, object]) -> str:
    """The id of a key written before keys had ids: its name, which owned its knowledge bases
    until now, unless that is the local owner's; then one derived from its salt. Both stable."""
    name, salt = entry["name"], entry["salt"]
    if name != LOCAL_OWNER:
        return str(name)
    return KEY_ID_PREFIX + hashlib.sha256(f"legacy:{salt}".encode()).hexdigest()[:32]


def write_keys(path: Path, keys: list[StoredKey]) -> None:
    """Replace the file atomically; readable by its owner only."""
    if not path.parent.is_dir():
        private_dir(path.parent)
    body = json.dumps({"version": 2, "keys": [_as_dict(k) for k in keys]}, indent=2)
    fd, tmp = tempfile.mkstemp(prefix=".api-keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _as_dict(key: StoredKey) -> dict[str, object]:
    return {
        "name": key.name,
        "id": key.id,
        "salt": key.salt,
        "sha256": key.sha256,
        "hint": key.hint,
        "created": key.created,
    }


def add_key(path: Path, name: str) -> str:
    """Create a key called `name`, store its hash in `path`, and return the key (shown once)."""
    if not _NAME.match(name):
        raise KeyFileError(
            f"key name {name!r} is invalid: use 1-64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() == LOCAL_OWNER:
        raise KeyFileError(
            f"key name {name!r} is reserved: {LOCAL_OWNER!r} owns what the CLI makes; pick another name"
        )
    keys = read_keys(path)
    if any(k.name == name for k in keys):
        raise KeyFileError(
            f"a key named {name!r} already exists in {path}; pick another name or "
            f"`luodi keys remove {name}` first"
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    stored = StoredKey(name, salt.hex(), _hash(salt, key), key[: len(KEY_PREFIX) + 4], int(time.time()),
                       id=_new_id({k.id for k in keys}))
    write_keys(path, keys + [stored])
    return key


def _new_id(taken: set[str]) -> str:
    """A random key id (128 bits): never one a key had before, so nothing it owned is inherited."""
    while (new := KEY_ID_PREFIX + secrets.token_hex(16)) in taken:
        continue
    return new


def remove_key(path: Path, name: str) -> None:
    keys = read_keys(path)
    kept = [k for k in keys if k.name != name]
    if len(kept) == len(keys):
        names = ", ".join(k.name for k in keys) or "none"
        raise KeyFileError(f"no key named {name!r} in {path} (keys: {names})")
    write_keys(path, kept)


class KeyStore:
    """The keys of one file, re-read whenever the file's modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: list[StoredKey] = []
        self._refresh()

    @classmethod
    def open(cls, path: Path) -> KeyStore:
        """A store that must hold at least one key (a server told to use a file expects keys in it)."""
        if not path.is_file():
            raise KeyFileError(
                f"API key file {path} does not exist; create a key with `luodi keys add NAME --file {path}`"
            )
        store = cls(path)
        if not store.names:
            raise KeyFileError(
                f"API key file {path} holds no keys; add one with `luodi keys add NAME --file {path}`"
            )
        return store

    @property
    def names(self) -> list[str]:
        self._refresh()
        return [k.name for k in self._keys]

    def verify(self, key: str) -> str | None:
        """The name of the key that matches `key`, or None."""
        stored = self.identify(key)
        return stored.name if stored is not None else None

    def identify(self, key: str) -> StoredKey | None:
        """The stored key that matches `key` (its `id` is what the caller owns by), or None."""
        self._refresh()
        for stored in self._keys:
            if stored.matches(key):
                return stored
        return None

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            # A deleted file means no key matches: fail closed, never open.
            self._keys = read_keys(self.path) if stamp is not None else []
            self._stamp = stamp


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
