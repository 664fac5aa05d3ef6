"""Filter plugins: decode, convert and select (BASE, IP2STR, PRINTPKT, ...)."""
