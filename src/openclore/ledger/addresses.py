"""Deposit addresses: stable, unique per user and currency, in each currency's address style."""

from __future__ import annotations

import hashlib

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _polymod(values: list[int]) -> int:
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if ((top >> i) & 1) else 0
    return chk


def _convertbits(data: bytes, frombits: int, tobits: int) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if bits:
        out.append((acc << (tobits - bits)) & maxv)
    return out


def bech32_segwit_v0(hrp: str, program: bytes) -> str:
    """A BIP-173 P2WPKH address (``bc1q…``) for a 20-byte program."""
    data = [0, *_convertbits(program, 8, 5)]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    polymod = _polymod(expanded + data + [0] * 6) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[d] for d in data + checksum)


def base58check(version: int, payload: bytes) -> str:
    raw = bytes([version]) + payload
    raw += hashlib.sha256(hashlib.sha256(raw).digest()).digest()[:4]
    num = int.from_bytes(raw, "big")
    text = ""
    while num:
        num, rem = divmod(num, 58)
        text = _B58[rem] + text
    pad = len(raw) - len(raw.lstrip(b"\0"))
    return "1" * pad + text


def deposit_address(secret: str, user_id: int, currency: str) -> str:
    digest = hashlib.sha256(f"{secret}:{user_id}:{currency}".encode()).digest()[:20]
    if currency == "bitcoin":
        return bech32_segwit_v0("bc", digest)
    if currency == "CLORE-Blockchain":
        return base58check(23, digest)  # Clore (a Ravencoin fork) P2PKH addresses start with "A"
    if currency.startswith("USD"):
        return "0x" + digest.hex()
    return f"{currency.lower()}:{digest.hex()}"
