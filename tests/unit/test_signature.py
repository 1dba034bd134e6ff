"""Standard Webhooks signatures: what verifies, what does not, and that nothing raises."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blueline.webhooks import signature

NOW = 1_800_000_000
BODY = json.dumps(
    {
        "type": "line.assigned",
        "data": {"subaccount_id": "sa_1", "request_id": "lr_1", "phone_number": "+14155550123"},
    }
).encode()
MSG_ID = "msg_2b7c1f0e"


@pytest.fixture
def secret() -> str:
    return signature.generate_secret()


def headers_for(
    secret: str, *, msg_id: str = MSG_ID, ts: int = NOW, body: bytes = BODY
) -> tuple[str, str, str]:
    return msg_id, str(ts), signature.sign(secret, msg_id, ts, body)


def check(
    secrets_: list[str],
    msg_id: str | None,
    ts: str | None,
    sig: str | None,
    body: bytes = BODY,
    now: float = NOW,
) -> bool:
    return signature.verify(secrets_, msg_id, ts, sig, body, now)


def test_generated_secret_is_whsec_with_a_32_byte_key() -> None:
    secret = signature.generate_secret()
    assert secret.startswith("whsec_")
    assert len(signature.secret_key(secret)) == 32
    assert signature.generate_secret() != secret


def test_signature_is_hmac_sha256_of_id_timestamp_and_body(secret: str) -> None:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{MSG_ID}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    ).decode()
    assert signature.sign(secret, MSG_ID, NOW, BODY) == f"v1,{expected}"


def test_signed_delivery_verifies(secret: str) -> None:
    assert check([secret], *headers_for(secret)) is True


def test_timestamps_within_the_tolerance_verify(secret: str) -> None:
    for skew in (-300, -299, 0, 299, 300):
        assert check([secret], *headers_for(secret, ts=NOW + skew)) is True


def test_one_matching_signature_among_several_is_enough(secret: str) -> None:
    other = signature.generate_secret()
    msg_id, ts, good = headers_for(secret)
    _, _, stale = headers_for(other)
    bogus = "v1," + base64.b64encode(b"\x00" * 32).decode()
    for header in (f"{stale} {good}", f"{good} {stale}", f"{bogus} {stale} {good}"):
        assert check([secret], msg_id, ts, header) is True


def test_any_of_our_secrets_may_match_during_rotation(secret: str) -> None:
    previous = signature.generate_secret()
    assert check([previous, secret], *headers_for(secret)) is True
    assert check([secret, previous], *headers_for(previous)) is True


def test_signature_from_another_secret_is_refused(secret: str) -> None:
    assert check([secret], *headers_for(signature.generate_secret())) is False


def test_no_secret_at_all_refuses_even_a_self_consistent_signature(secret: str) -> None:
    assert check([], *headers_for(secret)) is False


@pytest.mark.parametrize(
    "tampered",
    [BODY + b" ", BODY.replace(b"+14155550123", b"+14155550124"), b"", BODY[:-1]],
)
def test_tampered_body_is_refused(secret: str, tampered: bytes) -> None:
    assert check([secret], *headers_for(secret), body=tampered) is False


def test_signature_does_not_carry_over_to_another_id_or_timestamp(secret: str) -> None:
    _, _, sig = headers_for(secret)
    assert check([secret], "msg_other", str(NOW), sig) is False
    assert check([secret], MSG_ID, str(NOW + 1), sig) is False


@pytest.mark.parametrize("skew", [301, 3600, -301, -3600])
def test_stale_and_future_timestamps_are_refused(secret: str, skew: int) -> None:
    assert check([secret], *headers_for(secret, ts=NOW + skew)) is False


@pytest.mark.parametrize(
    "raw_ts",
    [
        "",
        "abc",
        "1.8e9",
        f"{NOW}.0",
        f" {NOW}",
        f"{NOW} ",
        f"-{NOW}",
        "+1800000000",
        "١٢٣",
        "9" * 40,
    ],
)
def test_non_integer_timestamps_are_refused(secret: str, raw_ts: str) -> None:
    msg_id, _, sig = headers_for(secret)
    assert check([secret], msg_id, raw_ts, sig) is False


def test_missing_headers_are_refused(secret: str) -> None:
    msg_id, ts, sig = headers_for(secret)
    assert check([secret], None, ts, sig) is False
    assert check([secret], msg_id, None, sig) is False
    assert check([secret], msg_id, ts, None) is False
    assert check([secret], None, None, None) is False


@pytest.mark.parametrize(
    "header",
    [
        "",
        "v1,",
        "v1,!!!notbase64!!!",
        "v1,@@@@",
        "v2,{good}",
        "{good_bare}",
        "v1 {good_bare}",
        "v1;{good_bare}",
    ],
)
def test_malformed_signature_headers_are_refused(secret: str, header: str) -> None:
    msg_id, ts, good = headers_for(secret)
    header = header.format(good=good.removeprefix("v1,"), good_bare=good.removeprefix("v1,"))
    assert check([secret], msg_id, ts, header) is False


def test_huge_headers_are_refused(secret: str) -> None:
    msg_id, ts, good = headers_for(secret)
    padding = " ".join(["v1," + base64.b64encode(b"\x00" * 32).decode()] * 200)
    assert check([secret], msg_id, ts, f"{padding} {good}") is False
    assert check([secret], msg_id, ts, good + " " + "x" * 10_000) is False
    assert check([secret], "m" * 10_000, ts, good) is False
    assert check([secret], msg_id, "1" * 10_000, good) is False


def test_signatures_past_the_candidate_limit_are_ignored(secret: str) -> None:
    msg_id, ts, good = headers_for(secret)
    filler = ["v1," + base64.b64encode(bytes([i]) * 32).decode() for i in range(16)]
    assert check([secret], msg_id, ts, " ".join([*filler, good])) is False
    assert check([secret], msg_id, ts, " ".join([*filler[:15], good])) is True


def test_non_ascii_message_id_is_refused(secret: str) -> None:
    msg_id = "msg_ünï"
    _, ts, sig = headers_for(secret, msg_id=msg_id)
    assert check([secret], msg_id, ts, sig) is False


def test_secret_without_valid_base64_never_verifies() -> None:
    broken = "whsec_!!!not-base64!!!"
    assert signature.secret_key(broken) == b""
    assert check([broken], *headers_for(signature.generate_secret())) is False


header_text = st.one_of(st.none(), st.text(max_size=600), st.binary(max_size=200).map(bytes.hex))


@settings(max_examples=400, deadline=None)
@given(
    msg_id=header_text,
    timestamp=st.one_of(header_text, st.integers().map(str)),
    sig=st.one_of(
        header_text,
        st.lists(st.text(max_size=60).map("v1,".__add__), max_size=30).map(" ".join),
    ),
    body=st.binary(max_size=300),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_verify_never_raises_on_arbitrary_headers(
    msg_id: str | None, timestamp: str | None, sig: str | None, body: bytes, now: float
) -> None:
    result = signature.verify([signature.generate_secret()], msg_id, timestamp, sig, body, now)
    assert result is False


@settings(max_examples=100, deadline=None)
@given(
    msg_id=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1),
    body=st.binary(max_size=500),
    skew=st.integers(min_value=-300, max_value=300),
)
def test_any_correctly_signed_delivery_verifies(msg_id: str, body: bytes, skew: int) -> None:
    msg_id = msg_id[: signature.MAX_ID_LEN]
    secret = signature.generate_secret()
    ts = NOW + skew
    assert check([secret], msg_id, str(ts), signature.sign(secret, msg_id, ts, body), body)
