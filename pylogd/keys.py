"""Keys: the typed, named values that plugins exchange inside a stack.

A stack's record is one preallocated Python list with a slot per output key
of every plugin in the stack.  A slot holds ``None`` when its key is not
valid for the current event; otherwise it holds the value in the Python
representation fixed for its type:

* integer types and BOOL: ``int``
* IPADDR: ``bytes`` of length 4 (IPv4, network order) or 16 (IPv6)
* STRING, RAWSTR: ``str``
* RAW: ``bytes`` or ``memoryview`` (only valid while the event is processed)
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass


class KeyType(enum.IntEnum):
    """ulogd's ULOGD_RET_* numbers, so ``-i`` and the SQL layer can speak its language."""

    NONE = 0x0000
    INT8 = 0x0001
    INT16 = 0x0002
    INT32 = 0x0003
    INT64 = 0x0004
    UINT8 = 0x0011
    UINT16 = 0x0012
    UINT32 = 0x0013
    UINT64 = 0x0014
    BOOL = 0x0050
    IPADDR = 0x0100
    IP6ADDR = 0x0200
    STRING = 0x8020
    RAW = 0x8030
    RAWSTR = 0x8040

    @property
    def label(self) -> str:
        return _LABELS.get(self, "Unknown type")

    @property
    def family(self) -> str:
        """The compatibility class used when an input key is resolved to an output key."""
        if self is KeyType.NONE:
            return "any"
        if self in INTEGER_TYPES:
            return "integer"
        if self in (KeyType.IPADDR, KeyType.IP6ADDR):
            return "address"
        return self.name.lower()


#: the key types whose values are Python ints (BOOL too: 0 or 1)
INTEGER_TYPES = frozenset(
    {
        KeyType.INT8,
        KeyType.INT16,
        KeyType.INT32,
        KeyType.INT64,
        KeyType.UINT8,
        KeyType.UINT16,
        KeyType.UINT32,
        KeyType.UINT64,
        KeyType.BOOL,
    }
)

_LABELS = {
    KeyType.INT8: "int 8",
    KeyType.INT16: "int 16",
    KeyType.INT32: "int 32",
    KeyType.INT64: "int 64",
    KeyType.UINT8: "unsigned int 8",
    KeyType.UINT16: "unsigned int 16",
    KeyType.UINT32: "unsigned int 32",
    KeyType.UINT64: "unsigned int 64",
    KeyType.BOOL: "boolean",
    KeyType.IPADDR: "IP addr",
    KeyType.STRING: "string",
    KeyType.RAW: "raw data",
}


class KeyFlag(enum.IntFlag):
    NONE = 0
    OPTIONAL = 0x100  # an input key that may stay unresolved
    INACTIVE = 0x200  # an input key skipped by resolution


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a plugin: its name, type and flags, plus the JSON (CIM) name if it has one."""

    name: str
    type: KeyType = KeyType.NONE
    flags: KeyFlag = KeyFlag.NONE
    help: str = ""
    cim: str | None = None

    @property
    def optional(self) -> bool:
        return bool(self.flags & KeyFlag.OPTIONAL)

    @property
    def inactive(self) -> bool:
        return bool(self.flags & KeyFlag.INACTIVE)


def types_compatible(wanted: KeyType, offered: KeyType) -> bool:
    """Whether an input key of type ``wanted`` may read an output key of type ``offered``.

    Integer widths are interchangeable (ulogd's NFCT gives oob.protocol as UINT8 where BASE
    gives UINT16, and both feed IP2STR); other classes must match.
    """
    fw, fo = wanted.family, offered.family
    return fw == "any" or fo == "any" or fw == fo


def address_text(value: bytes) -> str:
    """A raw address key's value as text: dotted quad, compressed IPv6, else its bytes in hex."""
    n = len(value)
    if n == 4:
        return socket.inet_ntop(socket.AF_INET, value)
    if n == 16:
        return socket.inet_ntop(socket.AF_INET6, value)
    return bytes(value).hex()
