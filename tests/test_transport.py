"""pylogd.transport on real sockets: what a stream owes the peer after a broken connection, the address checks.
(JSON's tests run the transports through a daemon: tests/test_json.py.)"""

from __future__ import annotations

import socket
import time

import pytest

from pylogd import transport
from pylogd.log import Logger
from pylogd.plugin import PluginError


def read_until(conn: socket.socket, end: bytes) -> bytes:
    conn.settimeout(5)
    data = b""
    while not data.endswith(end):
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_tcp_lines_the_peer_never_acknowledged_go_again(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        tcp = transport.open_transport(
            "tcp", host="127.0.0.1", port=str(server.getsockname()[1]), log=Logger("t1"), name="t1"
        )
        tcp.send([b"1\n", b"2\n"])
        conn, _ = server.accept()
        assert read_until(conn, b"2\n") == b"1\n2\n"
        conn.close()  # the collector dies having read everything: its kernel sends FIN
        # on a real network that FIN may still be on its way when the next batch goes: the batch goes into
        # a dead connection, the peer's kernel answers with a reset and acknowledges none of it
        monkeypatch.setattr(transport, "_peer_gone", lambda sock: False)
        lines = [b"3\n", b"4\n"]
        tcp.send(lines)
        assert lines == []  # the kernel took them: send() cannot know yet
        time.sleep(0.2)
        monkeypatch.undo()
        tcp.send([b"5\n"])  # sees the closed connection: the unacknowledged lines go first on the next one
        again, _ = server.accept()
        assert read_until(again, b"5\n") == b"3\n4\n5\n"  # 1 and 2 were acknowledged: not again
        assert tcp.statistics() == {"connects": 2, "oversized": 0, "resent": 2, "lost": 0}
        again.close()
        tcp.close()


def test_tcp_unacknowledged_lines_that_cannot_go_at_stop_are_counted_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    tcp = transport.open_transport(
        "tcp", host="127.0.0.1", port=str(server.getsockname()[1]), log=Logger("t1"), name="t1"
    )
    tcp.send([b"1\n"])
    conn, _ = server.accept()
    read_until(conn, b"1\n")
    conn.close()
    server.close()  # and nobody listens any more
    monkeypatch.setattr(transport, "_peer_gone", lambda sock: False)
    tcp.send([b"2\n", b"3\n"])
    time.sleep(0.2)
    tcp.close()
    assert tcp.statistics()["lost"] == 2


@pytest.mark.parametrize(
    ("mode", "host", "port", "path", "option", "message"),
    [
        ("tcp", "", "1", "", "host", "host must be"),
        ("tcp", "h", "0", "", "port", "port 0 is out of range"),
        ("udp", "h", "no-such-service", "", "port", "neither a number nor a udp service name"),
        ("unix", "", "", "", "path", "mode unix needs the socket's path in path"),
        ("unix", "", "", "/x" * 60, "path", "at most 107 fit"),
        ("tls", "h", "1", "", "mode", 'unknown mode "tls"'),
    ],
)
def test_check_address_names_the_option(mode: str, host: str, port: str, path: str, option: str, message: str) -> None:
    with pytest.raises(PluginError, match=message) as refused:
        transport.check_address(mode, host, port, path)
    assert refused.value.option == option
    transport.check_address("tcp", "localhost", "2003", "")  # a good one passes
