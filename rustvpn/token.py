"""Session tokens for TCP mode: 32 characters of [0-9a-zA-Z] from a cryptographic RNG."""

from __future__ import annotations

import hmac
import secrets
import string

TOKEN_ALPHABET = string.digits + string.ascii_letters
TOKEN_LENGTH = 32


def new_token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


def tokens_match(expected: str, presented: str | bytes) -> bool:
    """Constant-time comparison, so a wrong token leaks nothing through timing."""
    if isinstance(presented, str):
        presented = presented.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(expected.encode("ascii"), presented)
