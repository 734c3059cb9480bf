"""Properties of the config exchange beyond tests/unit/test_config_exchange.py, as the exchange fuzz target
checks them: bounded one-line errors for any peer text, no refusal that depends on the token, and a
round trip of whatever text a peer can get accepted (any key order, unknown keys, options)."""

from __future__ import annotations

import random
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from rustvpn.config_exchange import KNOWN_OPTIONS, ExchangeParams, format_exchange, parse_exchange, validate_exchange
from rustvpn.errors import ExchangeError, ExchangeMismatch

PROPERTY = settings(database=None, deadline=None, max_examples=200)

OUR_TOKEN = "OurSecretToken0123456789abcdefAB"
OURS = ExchangeParams(build_id="abc123", number_of_streams=4, mtu=1400, token=OUR_TOKEN)

# Any text a peer can put in a value: long, non-printable, wide characters; never ';' (the separator).
characters = st.characters(exclude_characters=";")
peer_values = (
    st.text(characters, max_size=300)
    | st.sampled_from(["abc123", "4", "1400"])
    | st.builds(lambda c, n: c * n, characters, st.integers(100, 20_000))  # long runs of one character
)
printable_tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=";"), max_size=300)


@PROPERTY
@given(build_id=peer_values, streams=peer_values, mtu=peer_values, token=peer_values, need_token=st.booleans())
def test_mismatch_messages_are_one_bounded_line_without_tokens(
    build_id: str, streams: str, mtu: str, token: str, need_token: bool
) -> None:
    theirs = {"build_id": build_id, "number_of_streams": streams, "mtu": mtu, "token": token}
    try:
        validate_exchange(OURS, theirs, need_token=need_token)
    except ExchangeMismatch as err:
        message = str(err)
        assert len(message.splitlines()) == 1
        assert len(message) < 1024  # each shown peer value is cut to 80 characters
        assert OUR_TOKEN not in message
        if err.key == "token":
            assert (err.ours, err.theirs) in {("<hidden>", "<missing>"), ("<hidden>", "<malformed>")}
        else:
            # The token is checked last: no other refusal may depend on it.
            with_other_token = dict(theirs, token="t" * 32)
            try:
                validate_exchange(OURS, with_other_token, need_token=need_token)
            except ExchangeMismatch as again:
                assert str(again) == message
            else:
                raise AssertionError("refusal depends on the token") from None


@PROPERTY
@given(key=st.text(st.characters(codec="utf-8", exclude_characters=";="), min_size=1, max_size=5000))
def test_repeated_key_message_is_bounded(key: str) -> None:
    text = f"{key}=1;{key}=2".encode()
    try:
        parse_exchange(text)
    except ExchangeError as err:
        assert "repeats key" in str(err) or "too long" in str(err)
        assert len(str(err)) < 1024
    else:
        raise AssertionError("repeated key accepted")


option_values = st.sampled_from(["1", "0", "", "yes", "11", " 1"])
noise = st.dictionaries(
    st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
        lambda k: k not in {"build_id", "number_of_streams", "mtu", "token", *KNOWN_OPTIONS}
    ),
    st.text(st.characters(codec="utf-8", exclude_characters=";"), max_size=8),
    max_size=3,
)


@PROPERTY
@given(
    token=printable_tokens.filter(lambda t: 0 < len(t) <= 256),
    streams=st.sampled_from(["4", "04", "004"]),
    options=st.dictionaries(st.sampled_from(KNOWN_OPTIONS), option_values),
    extra=noise,
    order=st.randoms(use_true_random=False),
)
def test_accepted_peer_text_round_trips(
    token: str, streams: str, options: dict[str, str], extra: dict[str, str], order: random.Random
) -> None:
    items = {"build_id": "abc123", "number_of_streams": streams, "mtu": "1400", "token": token, **options, **extra}
    pairs = list(items.items())
    order.shuffle(pairs)
    text = ";".join(f"{k}={v}" for k, v in pairs).encode()

    accepted = validate_exchange(OURS, parse_exchange(text), need_token=True)
    assert accepted.token == token
    assert accepted.options == {name for name, value in options.items() if value == "1"}
    # What we would say back in their place reads as the same params.
    assert validate_exchange(OURS, parse_exchange(format_exchange(accepted)), need_token=True) == accepted
