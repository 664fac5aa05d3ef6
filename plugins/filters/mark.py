"""MARK: pass only events whose mark, under a mask, equals a value; stop the others.

The conntrack mark (ct.mark) is tested when it is valid, otherwise the packet mark (oob.mark);
an event with neither passes. With the defaults (mark 0, mask all ones) only unmarked events
pass. MARK has no output keys: the event goes on unchanged or not at all.

``mask=-1`` (how ulogd shows and many configs write the default) means 0xffffffff, and any
value is used as its low 32 bits, as ulogd's unsigned comparison does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import STOP, Filter, Kind, PluginSpec, Slots, int_option, key

U32 = 0xFFFFFFFF


class Mark(Filter):
    spec = PluginSpec(
        name="MARK",
        kind=Kind.FILTER,
        help="Drops events unless (mark & mask) == mark option, using ct.mark if valid, else oob.mark.",
        options=(
            int_option("mark", 0, "the value the masked mark must equal", min=0, max=U32),
            int_option("mask", -1, "bits of the mark to compare; -1 means all 32", min=-1, max=U32),
        ),
        inputs=(
            key("ct.mark", KeyType.UINT32, "conntrack mark (flow events)", optional=True),
            key("oob.mark", KeyType.UINT32, "packet mark (NFLOG)", optional=True),
        ),
    )

    def configure(self) -> None:
        self.mark = self.options["mark"] & U32
        self.mask = self.options["mask"] & U32

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_ct, i_oob = slots.inp("ct.mark"), slots.inp("oob.mark")
        mark, mask = self.mark, self.mask
        stop = STOP

        if i_ct is None and i_oob is None:
            return lambda v: None
        if i_ct is None:

            def oob_only(v: list) -> Any:
                m = v[i_oob]
                if m is not None and m & mask != mark:
                    return stop
                return None

            return oob_only
        if i_oob is None:

            def ct_only(v: list) -> Any:
                m = v[i_ct]
                if m is not None and m & mask != mark:
                    return stop
                return None

            return ct_only

        def both(v: list) -> Any:
            m = v[i_ct]
            if m is None:
                m = v[i_oob]
            if m is not None and m & mask != mark:
                return stop
            return None

        return both
