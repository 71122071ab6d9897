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


# ----------------------------------------------------------------------------- validation
# Withdrawal addresses are checked with the encodings deposit addresses are built with: a typo
# fails its checksum here instead of sending coins nowhere.


def _bech32_decode(address: str) -> tuple[str, list[int]] | None:
    if address.lower() != address and address.upper() != address:
        return None  # BIP-173: mixed case is invalid
    address = address.lower()
    pos = address.rfind("1")
    if pos < 1 or pos + 7 > len(address) or len(address) > 90:
        return None
    hrp, rest = address[:pos], address[pos + 1 :]
    if any(c not in _BECH32 for c in rest) or any(not 33 <= ord(c) <= 126 for c in hrp):
        return None
    data = [_BECH32.index(c) for c in rest]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    if _polymod(expanded + data) != 1:  # bech32 (v0); bech32m is a later version's
        return None
    return hrp, data[:-6]


def _from_5bits(data: list[int]) -> bytes | None:
    acc = bits = 0
    out = bytearray()
    for value in data:
        acc = (acc << 5) | value
        bits += 5
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits >= 5 or (acc << (8 - bits)) & 0xFF:
        return None  # more than 4 padding bits, or non-zero padding
    return bytes(out)


def is_segwit_v0(hrp: str, address: str) -> bool:
    """A BIP-173 segwit version-0 address of ``hrp``: P2WPKH (20 bytes) or P2WSH (32 bytes)."""
    decoded = _bech32_decode(address)
    if decoded is None or decoded[0] != hrp or not decoded[1] or decoded[1][0] != 0:
        return False
    program = _from_5bits(decoded[1][1:])
    return program is not None and len(program) in (20, 32)


def base58check_version(address: str) -> int | None:
    """The version byte of a valid base58check address with a 20-byte payload, else None."""
    if not 25 <= len(address) <= 35 or any(c not in _B58 for c in address):
        return None
    num = 0
    for c in address:
        num = num * 58 + _B58.index(c)
    pad = len(address) - len(address.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    raw = b"\0" * pad + body
    if len(raw) != 25:
        return None
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        return None
    return payload[0]


def valid_address(currency: str, address: str) -> bool:
    """Whether ``address`` is a well-formed address of ``currency``, in the styles
    :func:`deposit_address` builds (and, for bitcoin, the other two common kinds)."""
    if currency == "bitcoin":
        # bech32 segwit v0 (bc1q…), P2PKH (1…) or P2SH (3…)
        return is_segwit_v0("bc", address) or base58check_version(address) in (0, 5)
    if currency == "CLORE-Blockchain":
        return base58check_version(address) == 23
    if currency.startswith("USD"):
        return (
            len(address) == 42
            and address.startswith("0x")
            and all(c in "0123456789abcdefABCDEF" for c in address[2:])
        )
    prefix = f"{currency.lower()}:"
    rest = address[len(prefix) :]
    return (
        address.startswith(prefix)
        and len(rest) == 40
        and all(c in "0123456789abcdef" for c in rest)
    )
