"""Unit tests for rustvpn.config_exchange: the ``key=value;...`` config exchange text."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustvpn.config_exchange import (
    MAX_EXCHANGE_TEXT,
    ExchangeParams,
    check_build_id,
    format_exchange,
    parse_exchange,
    validate_exchange,
)
from rustvpn.errors import ExchangeError, ExchangeMismatch, ProtocolError

PROPERTY = settings(database=None, deadline=None, max_examples=200)

OUR_TOKEN = "OurSecretToken0123456789abcdefAB"
PEER_TOKEN = "PeerSecretTokenZYXWVUTSRQ9876543"
OURS = ExchangeParams(build_id="abc123", number_of_streams=4, mtu=1400, token=OUR_TOKEN)


def peer_fields(**overrides: str | None) -> dict[str, str]:
    """The peer's parsed exchange, matching OURS; ``key=None`` drops a key."""
    fields: dict[str, str | None] = {
        "build_id": "abc123",
        "number_of_streams": "4",
        "mtu": "1400",
        "token": PEER_TOKEN,
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def peer_text(**overrides: str | None) -> bytes:
    return ";".join(f"{k}={v}" for k, v in peer_fields(**overrides).items()).encode()


def mismatch(
    theirs: dict[str, str],
    *,
    need_token: bool = True,
    ours: ExchangeParams = OURS,
) -> ExchangeMismatch:
    with pytest.raises(ExchangeMismatch) as info:
        validate_exchange(ours, theirs, need_token=need_token)
    return info.value


# --------------------------------------------------------------------------- format


def test_format_exact_bytes_and_order() -> None:
    assert format_exchange(OURS) == (
        b"build_id=abc123;number_of_streams=4;mtu=1400;token=OurSecretToken0123456789abcdefAB"
    )


def test_format_reference_style_build_id() -> None:
    params = ExchangeParams("unknown", 1, 1500, "t" * 32)
    assert format_exchange(params) == b"build_id=unknown;number_of_streams=1;mtu=1500;token=" + b"t" * 32


def test_format_is_utf8() -> None:
    params = ExchangeParams("bu\u00efld-\u00e9", 2, 100, "x")
    expected = "build_id=bu\u00efld-\u00e9;number_of_streams=2;mtu=100;token=x"
    assert format_exchange(params) == expected.encode("utf-8")


@pytest.mark.parametrize("bad", ["", "a;b", "a=b", ";", "=", "line\nbreak"])
def test_format_refuses_build_id_that_breaks_the_format(bad: str) -> None:
    with pytest.raises(ValueError):
        format_exchange(ExchangeParams(bad, 4, 1400, OUR_TOKEN))


# --------------------------------------------------------------------------- check_build_id


@pytest.mark.parametrize("good", ["unknown", "abc123", "0123456789abcdef" * 2 + "01234567", "v1.2-rc 3"])
def test_check_build_id_accepts_and_returns(good: str) -> None:
    assert check_build_id(good) == good


@pytest.mark.parametrize("bad", ["", ";", "=", "abc;def", "abc=def", "tab\there", "nul\x00"])
def test_check_build_id_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        check_build_id(bad)


# --------------------------------------------------------------------------- repr / describe


def test_repr_hides_token() -> None:
    text = repr(OURS)
    assert OUR_TOKEN not in text
    assert "abc123" in text and "1400" in text and "4" in text


def test_str_and_format_hide_token() -> None:
    assert OUR_TOKEN not in str(OURS)
    assert OUR_TOKEN not in f"{OURS}"
    assert OUR_TOKEN not in repr([OURS])


def test_describe_hides_token() -> None:
    assert OURS.describe() == "build_id=abc123 number_of_streams=4 mtu=1400"


def test_params_are_frozen() -> None:
    with pytest.raises(AttributeError):
        OURS.mtu = 1500  # type: ignore[misc]


# --------------------------------------------------------------------------- parse


def test_parse_reference_text() -> None:
    assert parse_exchange(format_exchange(OURS)) == {
        "build_id": "abc123",
        "number_of_streams": "4",
        "mtu": "1400",
        "token": OUR_TOKEN,
    }


def test_parse_empty_input() -> None:
    assert parse_exchange(b"") == {}


def test_parse_skips_empty_items() -> None:
    assert parse_exchange(b";;build_id=x;;;mtu=1400;") == {"build_id": "x", "mtu": "1400"}


def test_parse_skips_items_without_equals() -> None:
    assert parse_exchange(b"garbage;build_id=x;alsogarbage") == {"build_id": "x"}


def test_parse_skips_items_with_empty_key() -> None:
    assert parse_exchange(b"=orphan;build_id=x;=") == {"build_id": "x"}


def test_parse_splits_on_first_equals_only() -> None:
    assert parse_exchange(b"token=a=b==c;k==") == {"token": "a=b==c", "k": "="}


def test_parse_keeps_empty_values() -> None:
    assert parse_exchange(b"build_id=;mtu=") == {"build_id": "", "mtu": ""}


def test_parse_keeps_unknown_keys() -> None:
    assert parse_exchange(b"build_id=x;future_feature=1") == {"build_id": "x", "future_feature": "1"}


def test_parse_does_not_trim_whitespace() -> None:
    # Byte-for-byte, like the reference: " mtu" is a different (unknown) key.
    assert parse_exchange(b" mtu = 1400") == {" mtu ": " 1400"}


def test_parse_utf8_values() -> None:
    assert parse_exchange("build_id=\u00e9t\u00e9".encode()) == {"build_id": "\u00e9t\u00e9"}


@pytest.mark.parametrize("data", [b"build_id=\xff", b"\xc3", b"mtu=1400;\xed\xa0\x80", b"\x80abc=1"])
def test_parse_rejects_non_utf8(data: bytes) -> None:
    with pytest.raises(ExchangeError, match="UTF-8"):
        parse_exchange(data)


def test_parse_length_limit() -> None:
    at_limit = b"k=" + b"v" * (MAX_EXCHANGE_TEXT - 2)
    assert parse_exchange(at_limit) == {"k": "v" * (MAX_EXCHANGE_TEXT - 2)}
    with pytest.raises(ExchangeError, match="too long"):
        parse_exchange(at_limit + b"v")


def test_parse_rejects_ten_mib() -> None:
    with pytest.raises(ExchangeError):
        parse_exchange(b";" * (10 * 1024 * 1024))


@pytest.mark.parametrize(
    "data",
    [
        b"build_id=a;build_id=a",
        b"build_id=a;mtu=1400;build_id=b",
        b"mtu=1400;mtu=1500",
        b"token=x;number_of_streams=1;token=y",
    ],
)
def test_parse_rejects_duplicated_keys(data: bytes) -> None:
    with pytest.raises(ExchangeError, match="repeats"):
        parse_exchange(data)


def test_exchange_error_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_exchange(b"\xff")


# --------------------------------------------------------------------------- validate: success


def test_validate_accepts_matching_peer_and_returns_its_token() -> None:
    result = validate_exchange(OURS, parse_exchange(peer_text()), need_token=True)
    assert result == ExchangeParams("abc123", 4, 1400, PEER_TOKEN)
    assert type(result.number_of_streams) is int and type(result.mtu) is int


def test_validate_ignores_unknown_keys() -> None:
    theirs = parse_exchange(peer_text() + b";future_capability=yes;another=1")
    assert validate_exchange(OURS, theirs, need_token=True).token == PEER_TOKEN


def test_validate_key_order_does_not_matter() -> None:
    text = f"token={PEER_TOKEN};mtu=1400;number_of_streams=4;build_id=abc123"
    theirs = parse_exchange(text.encode())
    assert validate_exchange(OURS, theirs, need_token=True) == ExchangeParams("abc123", 4, 1400, PEER_TOKEN)


@pytest.mark.parametrize(("streams", "mtu"), [(1, 100), (100, 65535), (1, 65535), (100, 100)])
def test_validate_accepts_range_bounds(streams: int, mtu: int) -> None:
    ours = ExchangeParams("abc123", streams, mtu, OUR_TOKEN)
    theirs = peer_fields(number_of_streams=str(streams), mtu=str(mtu))
    result = validate_exchange(ours, theirs, need_token=True)
    assert (result.number_of_streams, result.mtu) == (streams, mtu)


def test_validate_token_not_required() -> None:
    result = validate_exchange(OURS, peer_fields(token=None), need_token=False)
    assert result == ExchangeParams("abc123", 4, 1400, "")


def test_validate_token_not_checked_when_not_required() -> None:
    result = validate_exchange(OURS, peer_fields(token="weird token\x01"), need_token=False)
    assert result.build_id == "abc123"


# --------------------------------------------------------------------------- validate: build_id


def test_build_id_mismatch_names_key_and_both_values() -> None:
    err = mismatch(peer_fields(build_id="deadbeef"))
    assert (err.key, err.ours, err.theirs) == ("build_id", "abc123", "deadbeef")
    assert "build_id" in str(err) and "abc123" in str(err) and "deadbeef" in str(err)


def test_build_id_compared_byte_for_byte() -> None:
    for near_miss in ["ABC123", "abc123 ", " abc123", "abc1234", ""]:
        err = mismatch(peer_fields(build_id=near_miss))
        assert err.key == "build_id"
        assert err.theirs == near_miss


def test_build_id_missing() -> None:
    err = mismatch(peer_fields(build_id=None))
    assert err.key == "build_id"
    assert err.theirs is None
    assert "build_id" in str(err) and "abc123" in str(err) and "missing" in str(err)


def test_build_id_checked_first_even_without_token_requirement() -> None:
    assert mismatch(peer_fields(build_id="x", mtu="1"), need_token=False).key == "build_id"


# --------------------------------------------------------------------------- validate: streams


def test_streams_mismatch_names_key_and_both_values() -> None:
    err = mismatch(peer_fields(number_of_streams="8"))
    assert (err.key, err.ours, err.theirs) == ("number_of_streams", 4, 8)
    assert "number_of_streams" in str(err) and "4" in str(err) and "8" in str(err)


@pytest.mark.parametrize("value", ["0", "101", "999999"])
def test_streams_out_of_range(value: str) -> None:
    err = mismatch(peer_fields(number_of_streams=value))
    assert err.key == "number_of_streams"
    assert err.ours == 4
    assert str(err.theirs) == value
    assert value in str(err) and "ours=4" in str(err)


@pytest.mark.parametrize("streams", [0, 101])
def test_streams_out_of_range_even_when_equal_to_ours(streams: int) -> None:
    ours = ExchangeParams("abc123", streams, 1400, OUR_TOKEN)
    err = mismatch(peer_fields(number_of_streams=str(streams)), ours=ours)
    assert err.key == "number_of_streams"
    assert (err.ours, err.theirs) == (streams, streams)


@pytest.mark.parametrize(
    "value",
    ["-5", "99999999999", "abc", "", " 4", "4 ", "4.0", "0x4", "+4", "4e0", "\u0664", "\uff14", "1_0"],
)
def test_streams_not_a_number(value: str) -> None:
    err = mismatch(peer_fields(number_of_streams=value))
    assert err.key == "number_of_streams"
    assert err.ours == 4
    assert err.theirs == value
    assert "number_of_streams" in str(err) and "ours=4" in str(err) and repr(value) in str(err)


def test_streams_huge_value_message_is_bounded() -> None:
    value = "9" * 10_000
    err = mismatch(peer_fields(number_of_streams=value))
    assert err.key == "number_of_streams"
    assert len(str(err)) < 300


def test_streams_missing() -> None:
    err = mismatch(peer_fields(number_of_streams=None))
    assert err.key == "number_of_streams"
    assert err.theirs is None
    assert "missing" in str(err) and "ours=4" in str(err)


def test_streams_with_leading_zero_is_the_same_number() -> None:
    result = validate_exchange(OURS, peer_fields(number_of_streams="04"), need_token=True)
    assert result.number_of_streams == 4


# --------------------------------------------------------------------------- validate: mtu


def test_mtu_mismatch_names_key_and_both_values() -> None:
    err = mismatch(peer_fields(mtu="1500"))
    assert (err.key, err.ours, err.theirs) == ("mtu", 1400, 1500)
    assert "mtu" in str(err) and "1400" in str(err) and "1500" in str(err)


@pytest.mark.parametrize("value", ["0", "99", "65536", "100000"])
def test_mtu_out_of_range(value: str) -> None:
    err = mismatch(peer_fields(mtu=value))
    assert err.key == "mtu"
    assert str(err.theirs) == value
    assert value in str(err) and "ours=1400" in str(err)


@pytest.mark.parametrize("mtu", [99, 65536])
def test_mtu_out_of_range_even_when_equal_to_ours(mtu: int) -> None:
    ours = ExchangeParams("abc123", 4, mtu, OUR_TOKEN)
    err = mismatch(peer_fields(mtu=str(mtu)), ours=ours)
    assert err.key == "mtu"
    assert (err.ours, err.theirs) == (mtu, mtu)


@pytest.mark.parametrize("value", ["-1400", "1400.0", "abc", "", "99999999999"])
def test_mtu_not_a_number(value: str) -> None:
    err = mismatch(peer_fields(mtu=value))
    assert err.key == "mtu"
    assert err.theirs == value
    assert repr(value) in str(err) and "ours=1400" in str(err)


def test_mtu_missing() -> None:
    err = mismatch(peer_fields(mtu=None))
    assert err.key == "mtu" and err.theirs is None


# --------------------------------------------------------------------------- validate: token


def test_token_missing_when_required() -> None:
    err = mismatch(peer_fields(token=None))
    assert err.key == "token"
    assert "token" in str(err)
    assert OUR_TOKEN not in str(err)


def test_token_empty_when_required() -> None:
    err = mismatch(peer_fields(token=""))
    assert err.key == "token"
    assert OUR_TOKEN not in str(err)


@pytest.mark.parametrize(
    "bad_token",
    ["secret\x00token", "secret\ntoken", "s\u00e9cretToken", "T" * 257],
    ids=["nul", "newline", "non-ascii", "too-long"],
)
def test_malformed_token_is_not_echoed(bad_token: str) -> None:
    err = mismatch(peer_fields(token=bad_token))
    assert err.key == "token"
    assert bad_token not in str(err)
    assert "secret" not in str(err) and "TTTT" not in str(err)
    assert OUR_TOKEN not in str(err)
    assert OUR_TOKEN not in repr(err.ours) and bad_token != err.theirs


def test_token_of_256_printable_ascii_accepted() -> None:
    assert validate_exchange(OURS, peer_fields(token="t" * 256), need_token=True).token == "t" * 256


@pytest.mark.parametrize(
    "overrides",
    [{"build_id": "zzz"}, {"number_of_streams": "7"}, {"mtu": "9000"}, {"mtu": "junk"}, {"token": None}],
)
def test_no_mismatch_message_leaks_either_token(overrides: dict[str, str | None]) -> None:
    err = mismatch(peer_fields(**overrides))
    assert OUR_TOKEN not in str(err)
    assert PEER_TOKEN not in str(err)


# --------------------------------------------------------------------------- properties


def fits_the_format(build_id: str) -> bool:
    return ";" not in build_id and "=" not in build_id and build_id.isprintable()


build_ids = st.text(min_size=1, max_size=40).filter(fits_the_format)
alnum_tokens = st.text(alphabet=string.digits + string.ascii_letters, min_size=1, max_size=64)
params_strategy = st.builds(
    ExchangeParams,
    build_id=build_ids,
    number_of_streams=st.integers(1, 100),
    mtu=st.integers(100, 65535),
    token=alnum_tokens,
)


@PROPERTY
@given(params=params_strategy)
def test_format_parse_validate_round_trip(params: ExchangeParams) -> None:
    text = format_exchange(params)
    ours = ExchangeParams(params.build_id, params.number_of_streams, params.mtu, "different")
    assert validate_exchange(ours, parse_exchange(text), need_token=True) == params


@PROPERTY
@given(data=st.binary(max_size=300))
def test_parse_arbitrary_bytes_only_raises_exchange_error(data: bytes) -> None:
    try:
        result = parse_exchange(data)
    except ExchangeError:
        return
    for key, value in result.items():
        assert key and ";" not in key and "=" not in key
        assert ";" not in value


garbage_pieces = st.sampled_from([b";", b"=", b"build_id", b"mtu", b"1", b"\xff", b"\xc3\xa9"])


@PROPERTY
@given(pieces=st.lists(garbage_pieces, max_size=30))
def test_parse_structured_garbage(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    items = data.split(b";")
    keys = [item.partition(b"=")[0] for item in items if b"=" in item and not item.startswith(b"=")]
    should_fail = b"\xff" in data or len(keys) != len(set(keys))
    if should_fail:
        with pytest.raises(ExchangeError):
            parse_exchange(data)
    else:
        assert set(parse_exchange(data)) == {k.decode() for k in keys}


keys = st.sampled_from(["build_id", "number_of_streams", "mtu", "token", "other"]) | st.text(max_size=5)
value_samples = st.sampled_from(["abc123", "4", "1400", "0", "-5", "99999999999", "", "\u0664"])
values = value_samples | st.text(max_size=20)


@PROPERTY
@given(theirs=st.dictionaries(keys, values, max_size=8), need_token=st.booleans())
def test_validate_arbitrary_mapping_only_raises_mismatch(theirs: dict[str, str], need_token: bool) -> None:
    try:
        result = validate_exchange(OURS, theirs, need_token=need_token)
    except ExchangeMismatch as err:
        assert err.key in {"build_id", "number_of_streams", "mtu", "token"}
        assert OUR_TOKEN not in str(err)
        return
    assert (result.build_id, result.number_of_streams, result.mtu) == ("abc123", 4, 1400)
    if need_token:
        assert result.token


@PROPERTY
@given(
    pairs=st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: ";" not in k and "=" not in k),
        st.text(max_size=10).filter(lambda v: ";" not in v),
        max_size=6,
    )
)
def test_parse_recovers_any_well_formed_mapping(pairs: dict[str, str]) -> None:
    text = ";".join(f"{k}={v}" for k, v in pairs.items()).encode()
    assert parse_exchange(text) == pairs
