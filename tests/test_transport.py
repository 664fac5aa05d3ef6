"""pylogd.transport on real sockets: what a stream owes the peer after a broken connection, the address checks.
(JSON's tests run the transports through a daemon: tests/test_json.py.)"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import IN_CI

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
        ("sctp", "h", "1", "", "mode", 'unknown mode "sctp"'),
    ],
)
def test_check_address_names_the_option(mode: str, host: str, port: str, path: str, option: str, message: str) -> None:
    with pytest.raises(PluginError, match=message) as refused:
        transport.check_address(mode, host, port, path)
    assert refused.value.option == option
    transport.check_address("tcp", "localhost", "2003", "")  # a good one passes


# ---------------------------------------------------------------------------------------------
# tls


def make_certificates(directory: Path, server_names: tuple[str, ...] = ("localhost",)) -> dict[str, Path]:
    """A CA made here with openssl, a server certificate for ``server_names`` (DNS names and IP addresses)
    and a client certificate, both signed by it: the paths by role (ca, server, server_key, client, ...)."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=pylogd test CA")
    sans = ",".join(f"IP:{n}" if n.replace(".", "").isdigit() or ":" in n else f"DNS:{n}" for n in server_names)
    for role, usage, alt in (("server", "serverAuth", sans), ("client", "clientAuth", "DNS:pylogd.test")):
        (directory / f"{role}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\nsubjectAltName={alt}\n"
        )
        run("req", *ec, "-keyout", f"{role}.key", "-out", f"{role}.csr", "-subj", f"/CN={alt.split(':')[1]}")
        run(
            "x509", "-req", "-in", f"{role}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{role}.pem", "-days", "2", "-extfile", f"{role}.ext",
        )  # fmt: skip
    return {
        "ca": directory / "ca.pem",
        "server": directory / "server.pem",
        "server_key": directory / "server.key",
        "client": directory / "client.pem",
        "client_key": directory / "client.key",
    }


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("CI=true but openssl is not installed")
        pytest.skip("openssl is not installed (apt-get install openssl)")
    return make_certificates(tmp_path_factory.mktemp("pki"), ("localhost", "127.0.0.1"))


class TLSServer:
    """A TLS receiver on loopback: accepts one connection at a time in a thread, keeps what it reads."""

    def __init__(self, certs: dict[str, Path], client_ca: bool = False) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs["server"], certs["server_key"])
        if client_ca:
            self.context.load_verify_locations(certs["ca"])
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.peers: list[dict] = []
        self.errors: list[str] = []

    def accept(self) -> ssl.SSLSocket:
        self.listener.settimeout(5)
        raw, _ = self.listener.accept()
        conn = self.context.wrap_socket(raw, server_side=True)
        self.peers.append(conn.getpeercert() or {})
        return conn

    def accept_quietly(self) -> None:
        """Accept a connection whose handshake may fail (the client refuses the certificate)."""
        with contextlib.suppress(OSError):
            self.accept()

    def read_until(self, conn: ssl.SSLSocket, end: bytes) -> bytes:
        data = read_until(conn, end)  # type: ignore[arg-type]
        self.received += data
        return data


def tls_transport(port: int, certs: dict[str, Path], **kw: str) -> transport.Transport:
    return transport.open_transport(
        "tls", host="127.0.0.1", port=str(port), log=Logger("t1"), name="t1", ca_file=str(certs["ca"]), **kw
    )


def test_tls_sends_whole_lines_and_a_client_certificate(certificates: dict[str, Path]) -> None:
    server = TLSServer(certificates, client_ca=True)
    tls = tls_transport(
        server.port, certificates, cert_file=str(certificates["client"]), key_file=str(certificates["client_key"])
    )
    lines = [b"%d %s\n" % (i, b"y" * (i % 700)) for i in range(2000)]  # groups of whole lines, 16 KiB each
    done = threading.Event()
    threading.Thread(target=lambda: (tls.send(list(lines)), done.set()), daemon=True).start()
    conn = server.accept()
    assert server.read_until(conn, lines[-1]) == b"".join(lines)
    assert done.wait(5)
    assert server.peers[0]["subject"] == ((("commonName", "pylogd.test"),),)
    assert tls.statistics() == {"connects": 1, "oversized": 0, "resent": 0, "lost": 0}
    conn.close()
    tls.close()


def test_tls_refuses_a_certificate_for_another_name(certificates: dict[str, Path]) -> None:
    server = TLSServer(certificates)
    tls = tls_transport(server.port, certificates, server_name="other.example")
    threading.Thread(target=server.accept_quietly, daemon=True).start()
    with pytest.raises(transport.TLSRefused) as refused:
        tls.send([b"1\n"])
    assert str(refused.value).startswith(
        f"TLS: refused the certificate of 127.0.0.1:{server.port}: "
        'it is not valid for the expected name "other.example"'
    )
    assert "Hostname mismatch" in str(refused.value)
    assert tls.statistics()["connects"] == 0
    tls.close()
    # the host's name is the one expected when server_name is empty; a CA not given is not trusted
    tls = transport.open_transport("tls", host="127.0.0.1", port=str(server.port), log=Logger("t1"), name="t1")
    assert tls.server_name == "127.0.0.1"
    threading.Thread(target=server.accept_quietly, daemon=True).start()
    with pytest.raises(transport.TLSRefused, match=re.escape('expected name "127.0.0.1"): unable to get local issuer')):
        tls.send([b"1\n"])
    tls.close()


def test_tls_lines_the_peer_never_acknowledged_go_again(
    certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = TLSServer(certificates)
    tls = tls_transport(server.port, certificates)
    threading.Thread(target=lambda: tls.send([b"1\n", b"2\n"]), daemon=True).start()
    conn = server.accept()
    assert server.read_until(conn, b"2\n") == b"1\n2\n"
    time.sleep(0.2)  # our kernel has the acknowledgement of 1 and 2
    conn.close()
    # as for tcp: the FIN may still be on its way when the next batch goes, into a dead connection
    monkeypatch.setattr(tls, "_peer_left", lambda: False)
    lines = [b"3\n", b"4\n"]
    tls.send(lines)
    assert lines == []
    time.sleep(0.2)
    monkeypatch.undo()
    sender = threading.Thread(target=lambda: tls.send([b"5\n"]), daemon=True)
    sender.start()
    again = server.accept()
    assert server.read_until(again, b"5\n") == b"3\n4\n5\n"  # 1 and 2 were acknowledged: not again
    sender.join(5)
    assert tls.statistics() == {"connects": 2, "oversized": 0, "resent": 2, "lost": 0}
    again.close()
    tls.close()


def test_tls_bad_files_are_refused_naming_the_option(tmp_path: Path, certificates: dict[str, Path]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(PluginError, match="cannot use the CA file") as refused:
        transport.tls_context(ca_file=str(junk))
    assert refused.value.option == "ca_file"
    with pytest.raises(PluginError, match="cannot use the certificate") as refused:
        transport.tls_context(cert_file=str(certificates["client"]), key_file=str(certificates["server_key"]))
    assert refused.value.option == "cert_file"


def test_a_peer_that_talks_is_not_taken_for_gone(certificates: dict[str, Path]) -> None:
    """A server that sends something (a banner; TLS 1.3 session tickets) is read and stays connected: with
    the socket's timeout, a second recv that found nothing waited 20 s and the connection was dropped."""
    for mode in ("tcp", "tls"):
        if mode == "tls":
            server = TLSServer(certificates)
            peer = tls_transport(server.port, certificates)
        else:
            server = TLSServer(certificates)
            server.context = None  # type: ignore[assignment]
            peer = transport.open_transport("tcp", host="127.0.0.1", port=str(server.port), log=Logger("t"), name="t")
        sent = threading.Thread(target=peer.send, args=([b"one\n"],), daemon=True)
        sent.start()
        if mode == "tls":
            conn = server.accept()
        else:
            server.listener.settimeout(5)
            conn, _ = server.listener.accept()
        conn.sendall(b"banner\n")
        assert read_until(conn, b"one\n") == b"one\n"  # type: ignore[arg-type]
        sent.join(5)
        time.sleep(0.1)  # the banner is there to be read before the next batch
        started = time.monotonic()
        peer.send([b"two\n"])
        assert read_until(conn, b"two\n") == b"two\n"  # type: ignore[arg-type]
        assert time.monotonic() - started < transport.SEND_TIMEOUT / 2
        assert peer.statistics()["connects"] == 1, mode
        conn.close()
        peer.close()
