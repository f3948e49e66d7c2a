"""Standard Webhooks signatures of the webhook sink (connectors.webhook.signing).

Every signature is checked by two verifiers that share no code with the signer: the
``standardwebhooks`` reference library, and ``spec_verify`` below, written from the spec's text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from connectors.webhook.signing import (
    MAX_KEY_BYTES,
    MIN_KEY_BYTES,
    WebhookSigner,
    batch_message_id,
    parse_secret,
)

pytestmark = pytest.mark.unit


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode("ascii")


OLD_KEY = bytes(range(32))
NEW_KEY = hashlib.sha256(b"new").digest()
OTHER_KEY = hashlib.sha256(b"unrelated").digest()
OLD_WHSEC = whsec(OLD_KEY)
NEW_WHSEC = whsec(NEW_KEY)
OTHER_WHSEC = whsec(OTHER_KEY)

# The example of the Standard Webhooks README (libraries' shared test vector).
SPEC_WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"event_id":"evt_a1b2c3d4e5f6","action":"user.login","note":"caf\xc3\xa9"}'
EVENT_ID = "evt_a1b2c3d4e5f6"


def spec_verify(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Verify as the spec describes: HMAC-SHA256 of ``{id}.{timestamp}.{body}``, any v1 entry."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(signature), expected):
            return True
    return False


def library_verify(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Verify with the reference library (which also insists on a timestamp within 5 minutes)."""
    try:
        Webhook(secret).verify(body, dict(headers), json_parse=False)
    except WebhookVerificationError as exc:
        # Only a signature mismatch counts as a rejection; a stale timestamp is a test bug.
        assert str(exc) == "No matching signature found"
        return False
    return True


Verifier = Callable[[str, Mapping[str, str], bytes], bool]
VERIFIERS = pytest.mark.parametrize(
    "verify", [spec_verify, library_verify], ids=["spec-text", "standardwebhooks"]
)


# --- known answers ---------------------------------------------------------------------------


def test_spec_readme_vector() -> None:
    headers = WebhookSigner([SPEC_WHSEC]).headers(SPEC_ID, SPEC_BODY, SPEC_TIMESTAMP)
    assert headers == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": SPEC_SIGNATURE,
    }


def test_known_answer_computed_by_hand() -> None:
    mac = hmac.new(OLD_KEY, b"evt_1.1700000000.hello", hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()

    headers = WebhookSigner([OLD_WHSEC]).headers("evt_1", b"hello", 1700000000)

    assert headers["webhook-signature"] == expected


# --- verification by independent verifiers -------------------------------------------------


@VERIFIERS
@pytest.mark.parametrize("body", [BODY, b"", b"[]", b'{"a":1}\n'], ids=repr)
def test_verifiers_accept(verify: Verifier, body: bytes) -> None:
    headers = WebhookSigner([OLD_WHSEC]).headers(EVENT_ID, body)
    assert verify(OLD_WHSEC, headers, body)


@VERIFIERS
def test_batch_request_verifies(verify: Verifier) -> None:
    msg_id = batch_message_id(["evt_1", "evt_2", "evt_3"])
    headers = WebhookSigner([OLD_WHSEC]).headers(msg_id, BODY)
    assert headers["webhook-id"] == msg_id
    assert verify(OLD_WHSEC, headers, BODY)


@VERIFIERS
def test_rotation_both_secrets_verify_unrelated_does_not(verify: Verifier) -> None:
    headers = WebhookSigner([OLD_WHSEC, NEW_WHSEC]).headers(EVENT_ID, BODY)

    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(OLD_WHSEC, headers, BODY)
    assert verify(NEW_WHSEC, headers, BODY)
    assert not verify(OTHER_WHSEC, headers, BODY)


@VERIFIERS
@pytest.mark.parametrize("field", ["body", "webhook-id", "webhook-timestamp"])
def test_tampering_fails_verification(verify: Verifier, field: str) -> None:
    headers = WebhookSigner([OLD_WHSEC]).headers(EVENT_ID, BODY)
    tampered = dict(headers)
    body = BODY
    if field == "body":
        body = BODY.replace(b"user.login", b"user.logout")
    elif field == "webhook-id":
        tampered["webhook-id"] = "evt_a1b2c3d4e5f7"
    else:
        # Still within the library's 5-minute tolerance, so only the signature can fail.
        tampered["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)

    assert verify(OLD_WHSEC, headers, BODY)
    assert not verify(OLD_WHSEC, tampered, body)


# --- headers ----------------------------------------------------------------------------------


def test_headers_are_exactly_the_three_standard_ones() -> None:
    headers = WebhookSigner([OLD_WHSEC]).headers(EVENT_ID, BODY, 1700000000)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == EVENT_ID
    assert headers["webhook-timestamp"] == "1700000000"
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"])


def test_default_timestamp_is_now() -> None:
    before = int(time.time())
    headers = WebhookSigner([OLD_WHSEC]).headers(EVENT_ID, BODY)
    after = int(time.time())
    assert before <= int(headers["webhook-timestamp"]) <= after


def test_same_inputs_give_same_headers_across_retries() -> None:
    signer = WebhookSigner([OLD_WHSEC, NEW_WHSEC])
    first = signer.headers(EVENT_ID, BODY, 1700000000)
    # Signing something else in between must not disturb the precomputed keyed state.
    signer.headers("evt_other", b"other body", 1700000001)
    again = signer.headers(EVENT_ID, BODY, 1700000000)
    fresh = WebhookSigner([OLD_WHSEC, NEW_WHSEC]).headers(EVENT_ID, BODY, 1700000000)
    assert first == again == fresh


def test_retry_with_a_new_timestamp_keeps_the_id() -> None:
    signer = WebhookSigner([OLD_WHSEC])
    first = signer.headers(EVENT_ID, BODY, 1700000000)
    retry = signer.headers(EVENT_ID, BODY, 1700000300)
    assert retry["webhook-id"] == first["webhook-id"]
    assert retry["webhook-signature"] != first["webhook-signature"]


def test_signatures_follow_secret_order_and_duplicates_are_dropped() -> None:
    unpadded_old = OLD_WHSEC.rstrip("=")  # same key written differently
    signer = WebhookSigner([NEW_WHSEC, OLD_WHSEC, NEW_WHSEC, unpadded_old])
    assert signer.key_count == 2

    def signature(secrets: list[str]) -> str:
        return WebhookSigner(secrets).headers(EVENT_ID, BODY, 1700000000)["webhook-signature"]

    assert signature([NEW_WHSEC, OLD_WHSEC, NEW_WHSEC, unpadded_old]) == " ".join(
        [signature([NEW_WHSEC]), signature([OLD_WHSEC])]
    )


@pytest.mark.parametrize("msg_id", ["evt_1", "a.b:c-d_e", "batch_" + "0" * 32, "x"])
def test_message_id_accepted(msg_id: str) -> None:
    assert WebhookSigner([OLD_WHSEC]).headers(msg_id, BODY, 1)["webhook-id"] == msg_id


@pytest.mark.parametrize(
    "msg_id", ["", " ", "evt 1", "evt\t1", "evt\n1", "evt_1\r", "evt\x00", "evt\x7f", "évt"]
)
def test_message_id_refused(msg_id: str) -> None:
    with pytest.raises(ValueError, match="message id"):
        WebhookSigner([OLD_WHSEC]).headers(msg_id, BODY, 1700000000)


@pytest.mark.parametrize("timestamp", [-1, True, False])
def test_timestamp_refused(timestamp: int) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        WebhookSigner([OLD_WHSEC]).headers(EVENT_ID, BODY, timestamp)


# --- secrets ----------------------------------------------------------------------------------


def test_parse_secret_spec_example() -> None:
    key = parse_secret(SPEC_WHSEC)
    assert len(key) == 24
    assert key == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


@pytest.mark.parametrize("size", [MIN_KEY_BYTES, 24, 31, 32, 33, MAX_KEY_BYTES])
def test_parse_secret_with_and_without_padding(size: int) -> None:
    key = hashlib.sha512(b"k").digest()[:size]
    assert parse_secret(whsec(key)) == key
    assert parse_secret(whsec(key).rstrip("=")) == key


# Each secret's base64 is long and distinctive, so "no part of it in the message" is testable.
SAMPLE_B64 = "Zm9vYmFyYmF6cXV4cXV1eHF1dXpjb3JnZ3JhdWx0"  # 30 bytes of base64


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (SAMPLE_B64, "must start with 'whsec_'"),
        ("WHSEC_" + SAMPLE_B64, "must start with 'whsec_'"),
        ("whsk_" + SAMPLE_B64, "asymmetric"),
        ("whpk_" + SAMPLE_B64, "asymmetric"),
        ("whsec_", "empty"),
        ("whsec_==", "empty key"),
        ("whsec_" + SAMPLE_B64 + "\n", "whitespace"),
        (" whsec_" + SAMPLE_B64, "whitespace"),
        ("whsec_" + SAMPLE_B64[:10] + " " + SAMPLE_B64[10:], "not standard base64"),
        ("whsec_" + SAMPLE_B64[:-1] + "!", "not standard base64"),
        ("whsec_" + SAMPLE_B64[:-1] + "-", "not standard base64"),  # URL-safe alphabet
        ("whsec_" + SAMPLE_B64 + "A", "not standard base64"),  # 4n+1 characters
        ("whsec_" + SAMPLE_B64 + "===", "not standard base64"),
        ("whsec_" + SAMPLE_B64[:4] + "=" + SAMPLE_B64[4:], "not standard base64"),
        (whsec(b"0123456789abcde"), "15 bytes; at least 16"),
        (whsec(b"x" * (MAX_KEY_BYTES + 1)), "65 bytes; at most 64"),
    ],
)
def test_parse_secret_errors_never_contain_the_secret(value: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_secret(value)

    messages = [str(caught.value)]
    if caught.value.__context__ is not None:
        messages.append(str(caught.value.__context__))
    assert problem in messages[0]
    # What follows the prefix is the secret; the prefix alone is public and may be named.
    secret_text = value.strip().removeprefix("whsec_").strip("=")
    for message in messages:
        if secret_text:
            assert value not in message
            assert secret_text not in message
        assert SAMPLE_B64[:8] not in message


def test_parse_secret_refuses_non_strings() -> None:
    with pytest.raises(TypeError, match="bytes"):
        parse_secret(b"whsec_" + SAMPLE_B64.encode())  # type: ignore[arg-type]


def test_signer_names_the_bad_secret_without_revealing_any() -> None:
    bad = "whsec_" + SAMPLE_B64 + "!"
    with pytest.raises(ValueError, match="signing secret #2: ") as caught:
        WebhookSigner([OLD_WHSEC, bad])
    message = str(caught.value)
    for secret in (bad, SAMPLE_B64, OLD_WHSEC, OLD_WHSEC.removeprefix("whsec_")):
        assert secret not in message


def test_signer_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WebhookSigner([])


def test_signer_refuses_a_lone_string() -> None:
    with pytest.raises(TypeError, match="single string"):
        WebhookSigner(OLD_WHSEC)


def test_repr_reveals_no_secret() -> None:
    signer = WebhookSigner([OLD_WHSEC, NEW_WHSEC])
    for text in (repr(signer), str(signer)):
        assert text == "WebhookSigner(keys=2)"
        for key in (OLD_KEY, NEW_KEY):
            assert base64.b64encode(key).decode()[:8] not in text
            assert key.hex()[:8] not in text


# --- batch ids --------------------------------------------------------------------------------


def test_batch_of_one_is_the_event_id() -> None:
    assert batch_message_id([EVENT_ID]) == EVENT_ID
    assert batch_message_id((EVENT_ID,)) == EVENT_ID


def test_batch_id_is_stable_and_as_documented() -> None:
    ids = ["evt_1", "evt_2", "evt_3"]
    expected = "batch_" + hashlib.sha256(b"evt_1\nevt_2\nevt_3").hexdigest()[:32]
    assert batch_message_id(ids) == expected
    assert batch_message_id(list(ids)) == batch_message_id(tuple(ids)) == expected
    assert re.fullmatch(r"batch_[0-9a-f]{32}", expected)


def test_batch_ids_differ_for_different_batches() -> None:
    batches = [
        ["evt_1", "evt_2"],
        ["evt_2", "evt_1"],
        ["evt_1", "evt_2", "evt_3"],
        ["evt_1", "evt_3"],
        ["evt_1", "evt_1"],
        ["evt_1evt_2", "x"],
    ]
    ids = {batch_message_id(batch) for batch in batches}
    assert len(ids) == len(batches)


@pytest.mark.parametrize("event_ids", [[], ["evt_1", ""], ["evt_1", "evt\n2"]], ids=repr)
def test_batch_id_refuses(event_ids: list[str]) -> None:
    with pytest.raises(ValueError):
        batch_message_id(event_ids)


def test_batch_id_refuses_a_lone_string() -> None:
    with pytest.raises(TypeError, match="single string"):
        batch_message_id(EVENT_ID)
