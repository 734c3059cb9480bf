"""Unit tests for rustvpn.token: session tokens and their constant-time comparison."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustvpn.token import TOKEN_ALPHABET, TOKEN_LENGTH, new_token, tokens_match

PROPERTY = settings(database=None, deadline=None, max_examples=200)

ALPHABET = set(string.digits + string.ascii_lowercase + string.ascii_uppercase)


# --------------------------------------------------------------------------- new_token


def test_alphabet_and_length_constants() -> None:
    assert set(TOKEN_ALPHABET) == ALPHABET
    assert len(TOKEN_ALPHABET) == 62  # no duplicates: a duplicate would bias the draw
    assert TOKEN_LENGTH == 32


def test_token_shape() -> None:
    for _ in range(200):
        token = new_token()
        assert isinstance(token, str)
        assert len(token) == 32
        assert set(token) <= ALPHABET


def test_tokens_are_fresh() -> None:
    tokens = [new_token() for _ in range(2000)]
    assert len(set(tokens)) == len(tokens)


def test_token_not_from_seeded_random_module() -> None:
    # A cryptographic RNG ignores random.seed(); the Mersenne Twister would repeat itself.
    state = random.getstate()
    try:
        random.seed(1234)
        first = new_token()
        random.seed(1234)
        second = new_token()
    finally:
        random.setstate(state)
    assert first != second


def test_rough_uniformity_over_alphabet() -> None:
    # 10000 tokens = 320000 characters, ~5161 per symbol, standard deviation ~71. A +-10% band is
    # over 7 standard deviations, so it cannot flake, yet it catches a missing symbol or a skewed
    # draw such as ``alphabet[byte % 62]`` (symbols 0-7 would come out ~21% too often).
    n_tokens = 10_000
    counts = Counter("".join(new_token() for _ in range(n_tokens)))
    assert set(counts) == ALPHABET
    expected = n_tokens * 32 / 62
    for symbol, count in counts.items():
        assert 0.9 * expected < count < 1.1 * expected, (symbol, count, expected)


def test_every_position_varies() -> None:
    tokens = [new_token() for _ in range(2000)]
    for position in range(32):
        # 2000 uniform draws over 62 symbols practically always hit all 62; 50 is a loose floor.
        assert len({t[position] for t in tokens}) >= 50, position


# --------------------------------------------------------------------------- tokens_match


def test_match_identical_str() -> None:
    token = new_token()
    assert tokens_match(token, token) is True
    assert tokens_match(token, str(token)) is True


def test_match_identical_bytes() -> None:
    token = new_token()
    assert tokens_match(token, token.encode("ascii")) is True


@pytest.mark.parametrize(
    "presented",
    [
        "abcdefghijklmnopqrstuvwxyz012345"[:-1] + "6",  # last character differs
        "Abcdefghijklmnopqrstuvwxyz012345",  # case differs
        "abcdefghijklmnopqrstuvwxyz01234",  # one shorter (a prefix)
        "abcdefghijklmnopqrstuvwxyz0123456",  # one longer
        "",
        b"",
        b"abcdefghijklmnopqrstuvwxyz01234",
        b"abcdefghijklmnopqrstuvwxyz012346",
        b"abcdefghijklmnopqrstuvwxyz012345\x00",
        "\u00e1bcdefghijklmnopqrstuvwxyz012345",
        b"\xffbcdefghijklmnopqrstuvwxyz012345",
        b"\xffbcdefghijklmnopqrstuvwxyz012345".decode("utf-8", "surrogateescape"),
    ],
)
def test_mismatches(presented: str | bytes) -> None:
    assert tokens_match("abcdefghijklmnopqrstuvwxyz012345", presented) is False


def test_match_is_exact_not_prefix_either_way() -> None:
    token = new_token()
    assert tokens_match(token, token[:16]) is False
    assert tokens_match(token[:16], token) is False


def test_two_fresh_tokens_do_not_match() -> None:
    assert tokens_match(new_token(), new_token()) is False


@PROPERTY
@given(presented=st.binary(max_size=64))
def test_arbitrary_bytes_match_only_when_equal(presented: bytes) -> None:
    token = "abcdefghijklmnopqrstuvwxyz012345"
    assert tokens_match(token, presented) is (presented == token.encode())


@PROPERTY
@given(presented=st.text(st.characters(exclude_categories=()), max_size=64))  # surrogates included
def test_arbitrary_text_match_only_when_equal(presented: str) -> None:
    token = "abcdefghijklmnopqrstuvwxyz012345"
    assert tokens_match(token, presented) is (presented == token)


@pytest.mark.parametrize("surrogate", ["\ud800", "\udbff", "\udc80", "\udcff", "\udfff"])
def test_lone_surrogate_is_a_mismatch_not_a_crash(surrogate: str) -> None:
    # A str can hold lone surrogates (e.g. from a lenient decode); that must compare False, not raise.
    token = "abcdefghijklmnopqrstuvwxyz012345"
    assert tokens_match(token, surrogate + token[1:]) is False
    assert tokens_match(token, token + surrogate) is False
    assert tokens_match(token, surrogate) is False
