"""A decoder of the pgoutput logical replication protocol (versions 1 and 2), pure and I/O free.

Each message the ``pgoutput`` plugin emits (one ``XLogData`` payload of the replication stream,
or one ``data`` value of ``pg_logical_slot_peek_binary_changes``) decodes to one frozen dataclass.
Version 2 adds streamed in-progress transactions: between Stream Start and Stream Stop every
Relation/Type/Insert/Update/Delete/Truncate/Message carries the transaction id first, so the
decoder is a small state machine (:class:`Decoder`) that knows whether it is inside a stream.

Column values of a tuple are ``None`` (SQL NULL), ``str`` (text format), ``bytes`` (binary format,
only with the ``binary`` option) or :data:`UNCHANGED_TOAST`: an UPDATE that did not touch an
out-of-line TOASTed value does not send it. That sentinel is distinct from ``None`` on purpose: an
applier that mistook it for NULL would erase the value.

Layouts follow the PostgreSQL 15 documentation, "Logical Replication Message Formats".
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

LSN = int


class _Unchanged(enum.Enum):
    UNCHANGED_TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _Unchanged.UNCHANGED_TOAST
"""An unchanged out-of-line TOAST value in an UPDATE: keep what the target has."""

ColumnValue = str | bytes | None | Literal[_Unchanged.UNCHANGED_TOAST]
TupleData = tuple[ColumnValue, ...]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


class DecodeError(ValueError):
    """The bytes are not a pgoutput message this decoder understands."""


def lsn_to_str(lsn: LSN) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def str_to_lsn(text: str) -> LSN:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def pg_timestamp(microseconds: int) -> datetime:
    """A protocol timestamp (microseconds since 2000-01-01 UTC) as an aware datetime."""
    return PG_EPOCH + timedelta(microseconds=microseconds)


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: LSN  # the LSN of the transaction's commit record
    commit_ts_us: int
    xid: int

    @property
    def commit_time(self) -> datetime:
        return pg_timestamp(self.commit_ts_us)


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: LSN
    end_lsn: LSN  # the end of the commit record: the position to confirm once applied
    commit_ts_us: int

    @property
    def commit_time(self) -> datetime:
        return pg_timestamp(self.commit_ts_us)


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: LSN
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    relation_oid: int
    namespace: str  # "" means pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]
    xid: int | None = None  # set only inside a streamed transaction

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.is_key)


@dataclass(frozen=True, slots=True)
class Type:
    type_oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: TupleData
    old: TupleData | None = None  # key columns ('K') or the whole old row ('O'), when sent
    old_kind: str | None = None  # 'K', 'O' or None (no old tuple: the key did not change)
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: TupleData
    old_kind: str  # 'K' key columns only, 'O' the whole old row (REPLICA IDENTITY FULL)
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    transactional: bool
    lsn: LSN
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: LSN
    end_lsn: LSN
    commit_ts_us: int

    @property
    def commit_time(self) -> datetime:
        return pg_timestamp(self.commit_ts_us)


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int  # equal to xid when the whole transaction aborted


PgoutputMessage = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message
    | StreamStart | StreamStop | StreamCommit | StreamAbort
)

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_STREAM_COMMIT = struct.Struct("!IBQQq")
_COLUMN_TAIL = struct.Struct("!Ii")


class _Reader:
    """A cursor over one message's bytes."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview, pos: int = 0) -> None:
        self.buf = bytes(buf) if isinstance(buf, memoryview) else buf
        self.pos = pos

    def need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            have = len(self.buf) - self.pos
            raise DecodeError(f"message truncated: need {n} bytes at offset {self.pos}, have {have}")

    def byte(self) -> int:
        self.need(1)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def char(self) -> str:
        return chr(self.byte())

    def int16(self) -> int:
        self.need(2)
        (value,) = _I16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return int(value)

    def int32(self) -> int:
        self.need(4)
        (value,) = _I32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def uint32(self) -> int:
        self.need(4)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        self.need(layout.size)
        values = layout.unpack_from(self.buf, self.pos)
        self.pos += layout.size
        return tuple(int(v) for v in values)

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise DecodeError(f"unterminated string at offset {self.pos}")
        value = self.buf[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return value

    def raw(self, n: int) -> bytes:
        self.need(n)
        value = self.buf[self.pos:self.pos + n]
        self.pos += n
        return value

    def done(self, kind: str) -> None:
        if self.pos != len(self.buf):
            raise DecodeError(f"{kind} message has {len(self.buf) - self.pos} trailing bytes")

    def tuple_data(self) -> TupleData:
        count = self.int16()
        buf = self.buf
        pos = self.pos
        values: list[ColumnValue] = []
        append = values.append
        # The hot loop of decoding: local variables and unpack_from, no method calls per column.
        try:
            for _ in range(count):
                kind = buf[pos]
                pos += 1
                if kind == 0x74:  # 't'
                    (length,) = _I32.unpack_from(buf, pos)
                    pos += 4
                    end = pos + length
                    if end > len(buf):
                        raise DecodeError("column value runs past the end of the message")
                    append(buf[pos:end].decode("utf-8"))
                    pos = end
                elif kind == 0x6E:  # 'n'
                    append(None)
                elif kind == 0x75:  # 'u'
                    append(UNCHANGED_TOAST)
                elif kind == 0x62:  # 'b'
                    (length,) = _I32.unpack_from(buf, pos)
                    pos += 4
                    end = pos + length
                    if end > len(buf):
                        raise DecodeError("column value runs past the end of the message")
                    append(buf[pos:end])
                    pos = end
                else:
                    raise DecodeError(f"unknown tuple column kind {chr(kind)!r} at offset {pos - 1}")
        except (IndexError, struct.error) as exc:
            raise DecodeError(f"tuple data truncated at offset {pos}") from exc
        self.pos = pos
        return tuple(values)


class Decoder:
    """Decodes one message at a time; tracks Stream Start/Stop, which change the layouts."""

    def __init__(self) -> None:
        self.streaming_xid: int | None = None

    def decode(self, data: bytes | memoryview) -> PgoutputMessage:
        r = _Reader(data)
        kind = r.char()
        message = self._decode(kind, r)
        r.done(kind)
        return message

    def _xid(self, r: _Reader) -> int | None:
        return r.uint32() if self.streaming_xid is not None else None

    def _decode(self, kind: str, r: _Reader) -> PgoutputMessage:
        xid: int | None
        if kind == "B":
            final_lsn, ts, begin_xid = r.unpack(_BEGIN)
            return Begin(final_lsn, ts, begin_xid)
        if kind == "C":
            flags, commit_lsn, end_lsn, ts = r.unpack(_COMMIT)
            return Commit(flags, commit_lsn, end_lsn, ts)
        if kind == "O":
            (commit_lsn,) = r.unpack(struct.Struct("!Q"))
            return Origin(commit_lsn, r.cstring())
        if kind == "R":
            xid = self._xid(r)
            oid = r.uint32()
            namespace = r.cstring()
            name = r.cstring()
            identity = r.char()
            columns = []
            for _ in range(r.int16()):
                flags = r.byte()
                col_name = r.cstring()
                type_oid, typmod = r.unpack(_COLUMN_TAIL)
                columns.append(Column(col_name, type_oid, typmod, bool(flags & 1)))
            return Relation(oid, namespace, name, identity, tuple(columns), xid)
        if kind == "Y":
            xid = self._xid(r)
            return Type(r.uint32(), r.cstring(), r.cstring(), xid)
        if kind == "I":
            xid = self._xid(r)
            oid = r.uint32()
            marker = r.char()
            if marker != "N":
                raise DecodeError(f"INSERT expects a new tuple 'N', got {marker!r}")
            return Insert(oid, r.tuple_data(), xid)
        if kind == "U":
            xid = self._xid(r)
            oid = r.uint32()
            marker = r.char()
            old: TupleData | None = None
            old_kind: str | None = None
            if marker in ("K", "O"):
                old_kind = marker
                old = r.tuple_data()
                marker = r.char()
            if marker != "N":
                raise DecodeError(f"UPDATE expects a new tuple 'N', got {marker!r}")
            return Update(oid, r.tuple_data(), old, old_kind, xid)
        if kind == "D":
            xid = self._xid(r)
            oid = r.uint32()
            marker = r.char()
            if marker not in ("K", "O"):
                raise DecodeError(f"DELETE expects an old tuple 'K' or 'O', got {marker!r}")
            return Delete(oid, r.tuple_data(), marker, xid)
        if kind == "T":
            xid = self._xid(r)
            count = r.int32()
            options = r.byte()
            oids = tuple(r.uint32() for _ in range(count))
            return Truncate(oids, bool(options & 1), bool(options & 2), xid)
        if kind == "M":
            xid = self._xid(r)
            flags = r.byte()
            (lsn,) = r.unpack(struct.Struct("!Q"))
            prefix = r.cstring()
            length = r.int32()
            return Message(bool(flags & 1), lsn, prefix, r.raw(length), xid)
        if kind == "S":
            start = StreamStart(r.uint32(), r.byte() == 1)
            self.streaming_xid = start.xid
            return start
        if kind == "E":
            self.streaming_xid = None
            return StreamStop()
        if kind == "c":
            stream_xid, flags, commit_lsn, end_lsn, ts = r.unpack(_STREAM_COMMIT)
            return StreamCommit(stream_xid, flags, commit_lsn, end_lsn, ts)
        if kind == "A":
            return StreamAbort(r.uint32(), r.uint32())
        raise DecodeError(f"unknown pgoutput message type {kind!r}")


def decode(data: bytes | memoryview) -> PgoutputMessage:
    """Decode one message outside a streamed transaction (protocol version 1)."""
    return Decoder().decode(data)
