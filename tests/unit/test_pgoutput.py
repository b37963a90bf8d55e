"""pgoutput decoder against hand-built messages (layouts from the PostgreSQL 15 documentation)."""

from __future__ import annotations

import struct

import pytest

from orgmove import pgoutput as po
from orgmove.pgoutput import UNCHANGED_TOAST, ColumnValue, DecodeError, Decoder, decode


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def tuple_data(*values: ColumnValue) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(v, bytes):
            out += b"b" + struct.pack("!i", len(v)) + v
        else:
            raw = str(v).encode()
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


def xid_prefix(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def test_begin_commit() -> None:
    msg = decode(b"B" + struct.pack("!QqI", 0x1_0000_0010, 123_456, 777))
    assert msg == po.Begin(0x1_0000_0010, 123_456, 777)
    assert isinstance(msg, po.Begin)
    assert msg.commit_time.isoformat() == "2000-01-01T00:00:00.123456+00:00"
    commit = decode(b"C" + struct.pack("!BQQq", 0, 0x10, 0x38, 5))
    assert commit == po.Commit(0, 0x10, 0x38, 5)


def test_origin_type_relation() -> None:
    assert decode(b"O" + struct.pack("!Q", 99) + cstr("orgmove_x")) == po.Origin(99, "orgmove_x")
    assert decode(b"Y" + struct.pack("!I", 16400) + cstr("public") + cstr("mood")) == po.Type(
        16400, "public", "mood"
    )
    body = struct.pack("!I", 16385) + cstr("public") + cstr("notes") + b"d" + struct.pack("!h", 2)
    body += b"\x01" + cstr("id") + struct.pack("!Ii", 20, -1)
    body += b"\x00" + cstr("body") + struct.pack("!Ii", 1043, 104)
    rel = decode(b"R" + body)
    assert isinstance(rel, po.Relation)
    assert rel.name == "notes" and rel.namespace == "public" and rel.replica_identity == "d"
    assert rel.columns == (po.Column("id", 20, -1, True), po.Column("body", 1043, 104, False))
    assert rel.key_columns == (po.Column("id", 20, -1, True),)
    assert rel.xid is None


def test_insert_every_value_kind() -> None:
    msg = decode(b"I" + struct.pack("!I", 5) + b"N" + tuple_data("1", None, "h\u00e9", b"\x00\x01", ""))
    assert msg == po.Insert(5, ("1", None, "h\u00e9", b"\x00\x01", ""))


def test_update_without_old_with_key_with_full_old_and_unchanged_toast() -> None:
    plain = decode(b"U" + struct.pack("!I", 5) + b"N" + tuple_data("1", UNCHANGED_TOAST))
    assert isinstance(plain, po.Update)
    assert plain.old is None and plain.old_kind is None
    # The sentinel is neither None nor a string: an applier must not write it.
    assert plain.new[1] is UNCHANGED_TOAST and plain.new[1] is not None
    keyed = decode(b"U" + struct.pack("!I", 5) + b"K" + tuple_data("1", None) + b"N" + tuple_data("2", "x"))
    assert keyed == po.Update(5, ("2", "x"), ("1", None), "K")
    full = decode(b"U" + struct.pack("!I", 5) + b"O" + tuple_data("1", "a") + b"N" + tuple_data("1", "b"))
    assert full == po.Update(5, ("1", "b"), ("1", "a"), "O")


def test_delete_and_truncate() -> None:
    assert decode(b"D" + struct.pack("!I", 5) + b"K" + tuple_data("7", None)) == po.Delete(5, ("7", None), "K")
    assert decode(b"D" + struct.pack("!I", 5) + b"O" + tuple_data("7", "x")) == po.Delete(5, ("7", "x"), "O")
    msg = decode(b"T" + struct.pack("!iB", 2, 3) + struct.pack("!II", 5, 6))
    assert msg == po.Truncate((5, 6), cascade=True, restart_identity=True)
    msg = decode(b"T" + struct.pack("!iB", 1, 0) + struct.pack("!I", 5))
    assert msg == po.Truncate((5,), cascade=False, restart_identity=False)


def test_logical_message() -> None:
    msg = decode(b"M" + b"\x01" + struct.pack("!Q", 0x20) + cstr("orgmove") + struct.pack("!i", 3) + b"abc")
    assert msg == po.Message(True, 0x20, "orgmove", b"abc")
    msg = decode(b"M" + b"\x00" + struct.pack("!Q", 0x20) + cstr("p") + struct.pack("!i", 0))
    assert msg == po.Message(False, 0x20, "p", b"")


def test_stream_messages_carry_the_xid_only_inside_a_stream() -> None:
    d = Decoder()
    assert d.decode(b"S" + struct.pack("!IB", 900, 1)) == po.StreamStart(900, True)
    assert d.streaming_xid == 900
    assert d.decode(b"I" + xid_prefix(900) + struct.pack("!I", 5) + b"N" + tuple_data("1")) == po.Insert(
        5, ("1",), 900
    )
    rel = d.decode(b"R" + xid_prefix(900) + struct.pack("!I", 5) + cstr("") + cstr("t") + b"f"
                   + struct.pack("!h", 0))
    assert isinstance(rel, po.Relation) and rel.xid == 900 and rel.replica_identity == "f"
    assert d.decode(b"U" + xid_prefix(900) + struct.pack("!I", 5) + b"N" + tuple_data("2")) == po.Update(
        5, ("2",), xid=900
    )
    assert d.decode(b"D" + xid_prefix(900) + struct.pack("!I", 5) + b"K" + tuple_data("2")) == po.Delete(
        5, ("2",), "K", 900
    )
    assert d.decode(b"T" + xid_prefix(900) + struct.pack("!iBI", 1, 0, 5)) == po.Truncate((5,), False, False, 900)
    assert d.decode(b"Y" + xid_prefix(900) + struct.pack("!I", 7) + cstr("s") + cstr("t")) == po.Type(
        7, "s", "t", 900
    )
    assert d.decode(b"M" + xid_prefix(900) + b"\x01" + struct.pack("!Q", 1) + cstr("p") + struct.pack("!i", 1)
                    + b"z") == po.Message(True, 1, "p", b"z", 900)
    assert d.decode(b"E") == po.StreamStop()
    assert d.streaming_xid is None
    # Outside a stream the same INSERT has no xid field.
    assert d.decode(b"I" + struct.pack("!I", 5) + b"N" + tuple_data("1")) == po.Insert(5, ("1",))
    assert d.decode(b"c" + struct.pack("!IBQQq", 900, 0, 0x40, 0x48, 9)) == po.StreamCommit(900, 0, 0x40, 0x48, 9)
    assert d.decode(b"A" + struct.pack("!II", 900, 901)) == po.StreamAbort(900, 901)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Z",
        b"B" + b"\x00" * 5,
        b"C" + struct.pack("!BQQq", 0, 1, 2, 3) + b"x",  # trailing bytes
        b"I" + struct.pack("!I", 5) + b"X" + tuple_data("1"),
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"t" + struct.pack("!i", 10) + b"ab",
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"q",
        b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 2) + b"n",
        b"D" + struct.pack("!I", 5) + b"N" + tuple_data("1"),
        b"U" + struct.pack("!I", 5) + b"K" + tuple_data("1") + b"K" + tuple_data("1"),
        b"O" + struct.pack("!Q", 1) + b"no-terminator",
    ],
)
def test_malformed_messages_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_lsn_text_round_trip() -> None:
    assert po.lsn_to_str(0x1_0000_00A0) == "1/A0"
    assert po.str_to_lsn("1/A0") == 0x1_0000_00A0
    assert po.str_to_lsn(po.lsn_to_str(123456789012)) == 123456789012
