"""Property tests of the record framing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loom.storage import codec
from loom.storage.codec import RecordType, Status

payloads = st.lists(st.binary(min_size=1, max_size=700), min_size=1, max_size=8)
types = st.sampled_from([RecordType.ENTRY, RecordType.STATE, RecordType.SNAPSHOT_MARK])


def encode_all(items: list[bytes], rtype: int = RecordType.ENTRY) -> tuple[bytes, list[int]]:
    out, crc, offsets = b"", 0, []
    for p in items:
        offsets.append(len(out))
        data, crc = codec.encode_record(rtype, 0, p, crc)
        out += data
    return out, offsets


def decode_all(buf: bytes) -> tuple[list[bytes], codec.Decoded]:
    got, off, crc = [], 0, 0
    while True:
        rec = codec.decode_at(buf, off, crc, 1 << 16)
        if rec.status != Status.OK:
            return got, rec
        got.append(rec.payload)
        off, crc = rec.next_offset, rec.crc


@given(payloads, types)
def test_roundtrip(items: list[bytes], rtype: int) -> None:
    buf, _ = encode_all(items, rtype)
    got, end = decode_all(buf + bytes(64))
    assert got == items
    assert end.status == Status.END


@settings(max_examples=300)
@given(payloads, st.data())
def test_any_bit_flip_is_detected(items: list[bytes], data: st.DataObject) -> None:
    buf, _ = encode_all(items)
    bit = data.draw(st.integers(0, len(buf) * 8 - 1))
    bad = bytearray(buf)
    bad[bit // 8] ^= 1 << (bit % 8)
    got, end = decode_all(bytes(bad))
    # Every record decoded before the damage is intact; the damaged one is never accepted.
    assert got == items[: len(got)]
    assert len(got) < len(items)
    assert end.status in (Status.CORRUPT, Status.TORN, Status.END)


@settings(max_examples=300)
@given(payloads, st.data())
def test_truncation_is_a_torn_tail(items: list[bytes], data: st.DataObject) -> None:
    buf, offsets = encode_all(items)
    cut = data.draw(st.integers(0, len(buf) - 1))
    got, end = decode_all(buf[:cut])
    complete = sum(1 for o, p in zip(offsets, items, strict=True) if o + 12 + len(p) <= cut)
    assert got == items[:complete]
    assert end.status in (Status.TORN, Status.END)
    assert end.offset == (offsets[complete] if complete < len(items) else len(buf))


@given(st.binary(min_size=1, max_size=300), st.binary(min_size=1, max_size=300))
def test_stale_records_do_not_chain_after_new_ones(first: bytes, second: bytes) -> None:
    """A record left over from an older write, aligned right after a newer record of the
    same length, is rejected: its CRC was chained from a different predecessor."""
    old, _ = encode_all([first, second])
    replacement = bytes((b + 1) % 256 for b in first)
    new, _ = encode_all([replacement])
    got, end = decode_all(new + old[len(new) :])
    assert got == [replacement]
    assert end.status in (Status.CORRUPT, Status.TORN)


def test_zero_sector_in_a_record_is_torn_not_corrupt() -> None:
    payload = bytes(range(256)) * 8  # 2 KiB spanning several sectors
    buf, _ = codec.encode_record(RecordType.ENTRY, 0, payload, 0)
    bad = bytearray(buf)
    bad[512:1024] = bytes(512)  # an unwritten sector
    assert codec.decode_at(bytes(bad), 0, 0, 1 << 16).status == Status.TORN
    bad = bytearray(buf)
    bad[700] ^= 0x10  # a flipped bit
    assert codec.decode_at(bytes(bad), 0, 0, 1 << 16).status == Status.CORRUPT


def test_oversized_length_is_rejected() -> None:
    buf, _ = codec.encode_record(RecordType.ENTRY, 0, b"x" * 100, 0)
    rec = codec.decode_at(buf, 0, 0, 50)
    assert rec.status == Status.CORRUPT
    assert "length" in rec.reason
