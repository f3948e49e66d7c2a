"""Cursor signing: round trips, and every way a cursor could be forged or transplanted."""

from __future__ import annotations

import base64

import orjson
import pytest
from pydantic import SecretStr

from connectors.api.cursor import MAX_CURSOR_LENGTH, Cursor, CursorCodec, _mac, filter_digest
from connectors.api.errors import CursorError

pytestmark = pytest.mark.unit

KEY = SecretStr("k" * 40)
OTHER_KEY = SecretStr("o" * 40)
DIGEST = filter_digest(b'{"order":"timestamp"}')
TIME = Cursor("timestamp", DIGEST, (1000, 5000), after=(2000, "evt_b"))
SEQ = Cursor("ingestion", DIGEST, None, after_sequence=42)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize(
    "cursor",
    [
        TIME,
        SEQ,
        Cursor("ingestion", DIGEST, None, after_sequence=None),
        Cursor("ingestion", DIGEST, (0, 10), after_sequence=0),
    ],
)
def test_round_trip(cursor: Cursor) -> None:
    codec = CursorCodec(KEY)
    text = codec.encode("tnt_a", cursor)
    assert len(text) < 300
    assert codec.decode("tnt_a", text) == cursor


def test_another_tenant_cannot_use_it() -> None:
    codec = CursorCodec(KEY)
    text = codec.encode("tnt_a", TIME)
    with pytest.raises(CursorError, match="not issued to you"):
        codec.decode("tnt_b", text)
    # Not even a tenant id that differs only by what a naive concatenation would hide.
    with pytest.raises(CursorError):
        codec.decode("tnt_a\x00", text)


def test_another_key_cannot_verify_it() -> None:
    text = CursorCodec(OTHER_KEY).encode("tnt_a", TIME)
    with pytest.raises(CursorError, match="signature"):
        CursorCodec(KEY).decode("tnt_a", text)


def test_a_changed_payload_fails_verification() -> None:
    codec = CursorCodec(KEY)
    payload, mac = codec.encode("tnt_a", TIME).split(".")
    data = orjson.loads(_unb64(payload))
    data["p"] = [0, "evt_a"]  # move the position back
    forged = _b64(orjson.dumps(data)) + "." + mac
    with pytest.raises(CursorError, match="signature"):
        codec.decode("tnt_a", forged)
    data = orjson.loads(_unb64(payload))
    data["w"] = [0, 9_000_000_000_000]  # widen the window past the range limit
    with pytest.raises(CursorError, match="signature"):
        codec.decode("tnt_a", _b64(orjson.dumps(data)) + "." + mac)


def test_a_flipped_signature_bit_fails() -> None:
    codec = CursorCodec(KEY)
    payload, mac = codec.encode("tnt_a", TIME).split(".")
    raw = bytearray(_unb64(mac))
    raw[0] ^= 1
    with pytest.raises(CursorError, match="signature"):
        codec.decode("tnt_a", payload + "." + _b64(bytes(raw)))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "a.b.c",
        "not base64!.AAAA",
        "x" * (MAX_CURSOR_LENGTH + 1),
        "eyJ2IjoxfQ." + "A" * 42,  # signature one character short
        "eyJ2IjoxfQ." + "A" * 43 + "=",
    ],
)
def test_malformed_cursors_are_refused(text: str) -> None:
    with pytest.raises(CursorError, match="malformed|signature"):
        CursorCodec(KEY).decode("tnt_a", text)


def test_previous_secret_still_verifies_but_new_cursors_use_the_current() -> None:
    old = CursorCodec(OTHER_KEY).encode("tnt_a", TIME)
    rotated = CursorCodec(KEY, previous=[OTHER_KEY])
    assert rotated.decode("tnt_a", old) == TIME
    fresh = rotated.encode("tnt_a", TIME)
    assert CursorCodec(KEY).decode("tnt_a", fresh) == TIME
    with pytest.raises(CursorError):
        CursorCodec(OTHER_KEY).decode("tnt_a", fresh)


def test_a_signed_payload_of_the_wrong_shape_is_refused() -> None:
    # Signed with the right key (as an older release might have), but not a valid cursor.
    codec = CursorCodec(KEY)
    for payload in (
        {"v": 2, "o": "t", "f": DIGEST, "w": [1, 2], "p": None},
        {"v": 1, "o": "x", "f": DIGEST, "w": [1, 2], "p": None},
        {"v": 1, "o": "t", "f": DIGEST, "w": None, "p": None},
        {"v": 1, "o": "t", "f": DIGEST, "w": [5, 2], "p": None},
        {"v": 1, "o": "t", "f": DIGEST, "w": [1, 2], "p": [True, "evt"]},
        {"v": 1, "o": "i", "f": DIGEST, "w": None, "s": -1},
        {"v": 1, "o": "i", "f": 7, "w": None, "s": 1},
    ):
        raw = orjson.dumps(payload)
        text = _b64(raw) + "." + _b64(_mac(codec._keys[0], "tnt_a", raw))
        with pytest.raises(CursorError, match="incompatible"):
            codec.decode("tnt_a", text)


def test_filter_digest_depends_on_every_byte() -> None:
    assert filter_digest(b"a") != filter_digest(b"b")
    assert filter_digest(b"a") == filter_digest(b"a")
