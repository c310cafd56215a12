"""Contact data at rest: AES-GCM ciphertext plus a keyed hash (HMAC) for exact lookups, each marked with the id of
the key that made it, so the secret can be rotated while the service runs.

The current key (CRM_SECRET_KEY) makes everything new; previous keys (CRM_SECRET_KEY_PREVIOUS) still decrypt,
match lookups and verify signed links until `crm secrets rotate` has re-encrypted every row under the current one.
API keys are stored as an unkeyed SHA-256 (they are 256-bit random: a hash suffices and no rotation breaks them);
hashes from before that are still accepted under any configured key and upgraded when the key is next used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
_MAGIC = b"\xc1K"  # marks a ciphertext that names its key: magic, 4-byte key id, nonce, sealed text
_KID_BYTES = 4
_INDEX_HEX = 55  # a kid-marked hash: 8 hex of key id, ':', 55 hex of HMAC — 64 characters, as the columns hold
API_KEY_SCHEME = "s1:"


def _derive(secret_key: str, purpose: bytes) -> bytes:
    """Derive an independent 256-bit key per purpose from one configured secret."""
    return hmac.new(secret_key.encode(), b"crm-key-derivation:" + purpose, hashlib.sha256).digest()


class _Keys:
    """The keys derived from one secret, and that secret's public id."""

    def __init__(self, secret_key: str) -> None:
        self.kid = _derive(secret_key, b"key-id")[:_KID_BYTES]
        self.kid_hex = self.kid.hex()
        self.aead = AESGCM(_derive(secret_key, b"contact-encryption"))
        self.index_key = _derive(secret_key, b"contact-index")
        self.api_key_key = _derive(secret_key, b"api-key-hash")
        self.link_key = _derive(secret_key, b"signed-links")

    def index(self, normalised: str) -> str:
        return f"{self.kid_hex}:{hmac.new(self.index_key, normalised.encode(), hashlib.sha256).hexdigest()[:_INDEX_HEX]}"

    def legacy_index(self, normalised: str) -> str:
        return hmac.new(self.index_key, normalised.encode(), hashlib.sha256).hexdigest()

    def link(self, purpose: str, subject: str) -> str:
        digest = hmac.new(self.link_key, f"{purpose}:{subject}".encode(), hashlib.sha256).digest()
        return f"{subject}.{base64.urlsafe_b64encode(digest[:18]).decode()}"


class ContactCipher:
    """Encrypts, decrypts and blind-indexes contact values (email, phone, name, push tokens) under the current key;
    reads what previous keys made."""

    def __init__(self, secret_key: str, previous: Sequence[str] = ()) -> None:
        self._keys = [_Keys(secret_key), *(_Keys(k) for k in previous if k and k != secret_key)]
        self._current = self._keys[0]
        self._by_kid = {k.kid: k for k in self._keys}

    @property
    def key_id(self) -> str:
        """The current key's id (8 hex characters; public: it names the key, it reveals nothing of it)."""
        return self._current.kid_hex

    @property
    def current_mark(self) -> bytes:
        """The bytes every ciphertext made under the current key starts with (what a query can match)."""
        return _MAGIC + self._current.kid

    @property
    def key_ids(self) -> list[str]:
        """The ids of every configured key, the current one first."""
        return [k.kid_hex for k in self._keys]

    def encrypt(self, plaintext: str | None) -> bytes | None:
        """Encrypt under the current key with a fresh nonce; None stays None."""
        if plaintext is None:
            return None
        nonce = os.urandom(_NONCE_BYTES)
        return self.current_mark + nonce + self._current.aead.encrypt(nonce, plaintext.encode(), None)

    def decrypt(self, ciphertext: bytes | None) -> str | None:
        """Decrypt a value encrypt() produced under any configured key (or, unmarked, before keys had ids)."""
        if ciphertext is None:
            return None
        blob = bytes(ciphertext)
        keys = self._by_kid.get(blob[2:2 + _KID_BYTES]) if blob[:2] == _MAGIC else None
        if keys is not None:
            body = blob[2 + _KID_BYTES:]
            try:
                return keys.aead.decrypt(body[:_NONCE_BYTES], body[_NONCE_BYTES:], None).decode()
            except InvalidTag:
                pass  # an unmarked ciphertext whose random nonce happened to start like a mark: read it so below
        for each in self._keys:
            try:
                return each.aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], None).decode()
            except InvalidTag:
                continue
        raise InvalidTag("no configured key decrypts this value (was CRM_SECRET_KEY_PREVIOUS dropped too early?)")

    def key_id_of(self, ciphertext: bytes | None) -> str | None:
        """The id of the key a ciphertext names (None: unmarked, or no value)."""
        if ciphertext is None or bytes(ciphertext[:2]) != _MAGIC:
            return None
        return bytes(ciphertext[2:2 + _KID_BYTES]).hex()

    def is_current(self, ciphertext: bytes | None) -> bool:
        """Whether a value is already under the current key (nothing to rotate)."""
        return ciphertext is None or self.key_id_of(ciphertext) == self._current.kid_hex

    def blind_index(self, normalised: str | None) -> str | None:
        """Keyed hash of an already normalised value under the current key, marked with its key id."""
        if normalised is None:
            return None
        return self._current.index(normalised)

    def blind_indexes(self, normalised: str) -> list[str]:
        """Every hash a stored row may carry for this value (each configured key, marked and unmarked): what a
        lookup matches while a rotation is under way."""
        return [form for keys in self._keys for form in (keys.index(normalised), keys.legacy_index(normalised))]

    def hash_api_key(self, api_key: str) -> str:
        """The stored form of an API key: an unkeyed SHA-256 (the key is 256 random bits), so rotating the secret
        leaves every API key working."""
        return API_KEY_SCHEME + base64.urlsafe_b64encode(hashlib.sha256(api_key.encode()).digest()).decode().rstrip("=")

    def api_key_hashes(self, api_key: str) -> list[str]:
        """Every stored form a presented key may match: the current scheme and the keyed hashes of before."""
        legacy = [base64.urlsafe_b64encode(hmac.new(k.api_key_key, api_key.encode(), hashlib.sha256).digest())
                  .decode().rstrip("=") for k in self._keys]
        return [self.hash_api_key(api_key), *legacy]

    def sign_link(self, purpose: str, subject: str) -> str:
        """A token naming `subject` for one purpose (e.g. an unsubscribe link) that only this service can make."""
        return self._current.link(purpose, subject)

    def verify_link(self, purpose: str, token: str) -> str | None:
        """The subject of a token sign_link made (under any configured key), or None when forged or altered."""
        subject, _, _ = token.rpartition(".")
        if not subject:
            return None
        # Compared as bytes: compare_digest refuses non-ASCII str (a TypeError, once a 500 for `é.x`).
        if any(hmac.compare_digest(keys.link(purpose, subject).encode(), token.encode()) for keys in self._keys):
            return subject
        return None
