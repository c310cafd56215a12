"""Contact data at rest: AES-GCM ciphertext plus a keyed hash (HMAC) for exact lookups."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


def _derive(secret_key: str, purpose: bytes) -> bytes:
    """Derive an independent 256-bit key per purpose from the one configured secret."""
    return hmac.new(secret_key.encode(), b"crm-key-derivation:" + purpose, hashlib.sha256).digest()


class ContactCipher:
    """Encrypts, decrypts and blind-indexes contact values (email, phone, push tokens)."""

    def __init__(self, secret_key: str) -> None:
        self._aead = AESGCM(_derive(secret_key, b"contact-encryption"))
        self._index_key = _derive(secret_key, b"contact-index")
        self._api_key_key = _derive(secret_key, b"api-key-hash")
        self._link_key = _derive(secret_key, b"signed-links")

    def encrypt(self, plaintext: str | None) -> bytes | None:
        """Encrypt with a fresh nonce; None stays None."""
        if plaintext is None:
            return None
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), None)

    def decrypt(self, ciphertext: bytes | None) -> str | None:
        """Decrypt a value produced by encrypt()."""
        if ciphertext is None:
            return None
        blob = bytes(ciphertext)
        return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], None).decode()

    def blind_index(self, normalised: str | None) -> str | None:
        """Keyed hash of an already normalised value, for equality search without plaintext."""
        if normalised is None:
            return None
        return hmac.new(self._index_key, normalised.encode(), hashlib.sha256).hexdigest()

    def hash_api_key(self, api_key: str) -> str:
        """Keyed hash of an API key (keys are random, so a fast keyed hash suffices)."""
        digest = hmac.new(self._api_key_key, api_key.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sign_link(self, purpose: str, subject: str) -> str:
        """A token naming `subject` for one purpose (e.g. an unsubscribe link) that only this key can make."""
        digest = hmac.new(self._link_key, f"{purpose}:{subject}".encode(), hashlib.sha256).digest()
        return f"{subject}.{base64.urlsafe_b64encode(digest[:18]).decode()}"

    def verify_link(self, purpose: str, token: str) -> str | None:
        """The subject of a token made by sign_link for this purpose, or None when it is forged or altered."""
        subject, _, _ = token.rpartition(".")
        # Compared as bytes: compare_digest refuses non-ASCII str (a TypeError, once a 500 for `é.x`).
        if not subject or not hmac.compare_digest(self.sign_link(purpose, subject).encode(), token.encode()):
            return None
        return subject
