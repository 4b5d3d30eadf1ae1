# -*- test-case-name: tests.test_fake_minio_users -*-
"""
MinIO's admin payload encryption (madmin-go C{EncryptData}/C{DecryptData}),
written for the fake from the format, independently of C{minio.crypto}, so
that the fake checks the daemon's encryption instead of sharing its code.

A payload is C{salt (32) | AEAD id (1) | nonce (8) | stream}. The key is
derived from the password and the salt: Argon2id (t=1, m=64 MiB, p=4) for
ids 0 (AES-256-GCM) and 1 (ChaCha20-Poly1305), PBKDF2-SHA256 (8192 rounds,
madmin's FIPS mode) for id 2 (AES-256-GCM). The stream is secure-io/sio:
the plaintext in packages of 16 KiB, each sealed with the nonce followed by
its little-endian sequence number (from 1) and, as associated data, a flag
byte (0x80 on the last package, else 0) followed by the tag of sealing
nothing under sequence number 0. The last package may be empty, never
missing.

Argon2id costs 64 MiB and tens of milliseconds: fine for a test double.
"""

from __future__ import annotations

import hashlib
import os

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

__all__ = ["AES_GCM", "CHACHA20_POLY1305", "MadminCryptoError", "PBKDF2_AES_GCM", "decrypt_data", "encrypt_data"]

AES_GCM = 0x00
CHACHA20_POLY1305 = 0x01
PBKDF2_AES_GCM = 0x02

_SALT = 32
_NONCE = 8
_HEADER = _SALT + 1 + _NONCE
_PACKAGE = 16 * 1024
_TAG = 16


class MadminCryptoError(ValueError):
    """The data is not a payload this password opens (madmin: "unexpected header",
    "invalid encryption algorithm ID", "sio: data is not authentic")."""


def _key(aead_id: int, password: str, salt: bytes) -> bytes:
    if aead_id in (AES_GCM, CHACHA20_POLY1305):
        return hash_secret_raw(secret=password.encode(), salt=salt, time_cost=1, memory_cost=64 * 1024,
                               parallelism=4, hash_len=32, type=Type.ID)
    if aead_id == PBKDF2_AES_GCM:
        return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 8192, 32)
    raise MadminCryptoError("madmin: invalid encryption algorithm ID")


def _cipher(aead_id: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return ChaCha20Poly1305(key) if aead_id == CHACHA20_POLY1305 else AESGCM(key)


def _nonce(nonce: bytes, sequence: int) -> bytes:
    return nonce + sequence.to_bytes(4, "little")


def encrypt_data(password: str, data: bytes, *, aead_id: int = AES_GCM) -> bytes:
    """C{data} encrypted as madmin's C{EncryptData} does, under a fresh salt and nonce."""
    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    cipher = _cipher(aead_id, _key(aead_id, password, salt))
    associated = cipher.encrypt(_nonce(nonce, 0), b"", None)
    out = [salt, bytes([aead_id]), nonce]
    # sio seals full packages while more data follows; the rest (possibly
    # nothing, possibly a full package) is the flagged last one.
    packages = [data[i:i + _PACKAGE] for i in range(0, len(data), _PACKAGE)] or [b""]
    for sequence, package in enumerate(packages, start=1):
        flag = b"\x80" if sequence == len(packages) else b"\x00"
        out.append(cipher.encrypt(_nonce(nonce, sequence), package, flag + associated))
    return b"".join(out)


def decrypt_data(password: str, data: bytes) -> bytes:
    """
    The plaintext of a madmin payload.

    @raise MadminCryptoError: a short header, an unknown algorithm, or any
        package that does not authenticate (wrong password, tampering,
        truncation, a missing last package).
    """
    if len(data) < _HEADER:
        raise MadminCryptoError("unexpected header")
    salt, aead_id, nonce = data[:_SALT], data[_SALT], data[_SALT + 1:_HEADER]
    cipher = _cipher(aead_id, _key(aead_id, password, salt))
    associated = cipher.encrypt(_nonce(nonce, 0), b"", None)
    stream = data[_HEADER:]
    if len(stream) < _TAG:
        raise MadminCryptoError("sio: data is not authentic")
    sealed = _PACKAGE + _TAG
    plain = []
    sequence, offset = 1, 0
    while True:
        # A package is the last one when nothing follows it.
        last = len(stream) - offset <= sealed
        package = stream[offset:offset + sealed]
        flag = b"\x80" if last else b"\x00"
        try:
            plain.append(cipher.decrypt(_nonce(nonce, sequence), package, flag + associated))
        except (InvalidTag, ValueError):
            raise MadminCryptoError("sio: data is not authentic") from None
        if last:
            return b"".join(plain)
        sequence, offset = sequence + 1, offset + sealed
