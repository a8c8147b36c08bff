"""Authenticated clients (issue #12 item 5): CURVE with an allow-list of client keys, for real on
127.0.0.1: `streamav keys`, an allowed client receives, one not on the list receives nothing and
cannot `reset`, a revoked key loses its state-changing commands, an abusive client is banned."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from conftest import (OBAMA, cli_env, free_tcp_port, require_shared_data, streamav_command)
from streamav.clock import now_ns
from streamav.errors import EndpointError, InputError
from streamav.wire.control import ControlServer, request
from streamav.wire.keys import make_keys
from streamav.wire.publisher import Publisher
from streamav.wire.subscriber import Subscriber
import wire_samples

STREAMAV = streamav_command()
NOTHING_S = 1.5  # how long a refused client is watched for a message


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*STREAMAV, *args], capture_output=True, text=True, timeout=timeout_s,
                          env=cli_env(), stdin=subprocess.DEVNULL)


@pytest.fixture
def keys(tmp_path) -> Path:
    folder = tmp_path / "keys"
    make_keys(folder, ["alice", "bob"])
    # mallory has a key pair of her own and the server's public key, but is not on the list
    make_keys(tmp_path / "elsewhere", ["mallory"], server=False)
    shutil.copy(tmp_path / "elsewhere" / "mallory.key_secret", folder / "mallory.key_secret")
    return folder


def keep_publishing(publisher: Publisher, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            publisher.publish(wire_samples.emotion(top="happy"), now_ns())
            stop.wait(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def client(endpoint: str, keys: Path, name: str | None, **kwargs) -> Subscriber:
    return Subscriber(endpoint, topics="emotion", curve_server_public_key_file=keys / "server.key",
                      curve_client_secret_key_file=keys / f"{name}.key_secret" if name else None,
                      **kwargs)


# ---- streamav keys ------------------------------------------------------------------------------


def test_keys_command_makes_server_and_client_pairs_with_private_secrets(tmp_path) -> None:
    folder = tmp_path / "k"
    result = run_cli("keys", "--dir", str(folder), "--client", "alice", "--client", "bob")
    assert result.returncode == 0, result.stderr
    assert "server key pair made" in result.stdout and "client alice" in result.stdout
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(folder) == 0o700
    for name in ("server", "alice", "bob"):
        assert mode(folder / f"{name}.key_secret") == 0o600
        public, secret = zmq.auth.load_certificate(folder / f"{name}.key_secret")
        assert len(public) == 40 and len(secret) == 40
    assert mode(folder / "server.key") == 0o644
    assert sorted(p.name for p in (folder / "clients").iterdir()) == ["alice.key", "bob.key"]
    alice_public, alice_secret = zmq.auth.load_certificate(folder / "clients" / "alice.key")
    assert alice_secret is None
    assert alice_public == zmq.auth.load_certificate(folder / "alice.key_secret")[0]
    assert not (folder / "clients" / "alice.key_secret").exists()  # no secret in the allow-list

    server_before = (folder / "server.key_secret").read_bytes()
    again = run_cli("keys", "--dir", str(folder), "--client", "carol")
    assert again.returncode == 0 and "kept" in again.stdout
    assert (folder / "server.key_secret").read_bytes() == server_before
    for args, phrase in ((["--client", "alice"], "exists already"),
                         (["--client", "../x"], "client name"),
                         (["--client", "server"], "client name"),
                         (["--no-server"], "nothing to make")):
        bad = run_cli("keys", "--dir", str(folder), *args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.startswith("streamav: error: ") and phrase in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_key_files_are_never_overwritten(tmp_path) -> None:
    folder = tmp_path / "k"
    make_keys(folder, ["alice"])
    (folder / "clients" / "alice.key").unlink()  # half a client left behind
    with pytest.raises(InputError, match="exists already"):
        make_keys(folder, ["alice"])


# ---- the data socket ------------------------------------------------------------------------------


def test_allowed_client_receives_and_one_not_on_the_list_gets_nothing(keys: Path, endpoint: str) -> None:
    stop = threading.Event()
    with Publisher(endpoint, curve_secret_key_file=keys / "server.key_secret") as publisher:
        keep_publishing(publisher, stop)
        try:
            with client(endpoint, keys, "alice") as alice:
                message = alice.recv(timeout_s=10)
                assert message is not None and message.body.top == "happy"
            for name in ("mallory", None):  # a key pair of her own; a fresh pair per socket
                with client(endpoint, keys, name) as refused:
                    assert refused.recv(timeout_s=NOTHING_S) is None, name
            with Subscriber(endpoint, topics="emotion") as plain:  # no CURVE at all
                assert plain.recv(timeout_s=NOTHING_S) is None
            assert publisher.clients_refused >= 2
            with client(endpoint, keys, "bob") as bob:  # the list holds more than one
                assert bob.recv(timeout_s=10) is not None
        finally:
            stop.set()


def test_a_key_added_to_the_folder_is_let_in_without_a_restart(keys: Path, tmp_path, endpoint: str) -> None:
    stop = threading.Event()
    with Publisher(endpoint, curve_secret_key_file=keys / "server.key_secret") as publisher:
        keep_publishing(publisher, stop)
        try:
            with client(endpoint, keys, "mallory") as mallory:
                assert mallory.recv(timeout_s=NOTHING_S) is None
            shutil.copy(tmp_path / "elsewhere" / "clients" / "mallory.key", keys / "clients")
            with client(endpoint, keys, "mallory") as mallory:
                assert mallory.recv(timeout_s=10) is not None
        finally:
            stop.set()


def test_an_allowed_client_that_floods_subscriptions_is_banned(keys: Path, endpoint: str) -> None:
    stop = threading.Event()
    with Publisher(endpoint, curve_secret_key_file=keys / "server.key_secret") as publisher:
        keep_publishing(publisher, stop)
        try:
            with client(endpoint, keys, "bob") as bob:
                assert bob.recv(timeout_s=10) is not None
                with client(endpoint, keys, "alice") as alice:
                    for _ in range(1000):
                        alice._socket.setsockopt(zmq.SUBSCRIBE, os.urandom(16))
                    deadline = time.monotonic() + 10
                    while publisher.socket_resets == 0 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert publisher.socket_resets == 1
                    while alice.recv(timeout_s=0.01) is not None:  # what came before the reset
                        pass
                    assert alice.recv(timeout_s=NOTHING_S) is None  # refused since
                    assert bob.recv(timeout_s=10) is not None  # bob reconnected by himself
                time.sleep(0.3)
                assert publisher.socket_resets == 1  # alice was not let in again
        finally:
            stop.set()


def test_curve_needs_an_allow_list_or_any(tmp_path, endpoint: str) -> None:
    folder = tmp_path / "k"
    make_keys(folder)  # a server pair, no client yet
    secret = folder / "server.key_secret"
    with pytest.raises(EndpointError, match="does not exist"):
        Publisher(endpoint, curve_secret_key_file=secret).start()
    with pytest.raises(EndpointError, match="does not exist"):
        ControlServer(endpoint, curve_secret_key_file=secret).start()
    (folder / "clients").mkdir()
    with pytest.raises(EndpointError, match="holds no key"):
        Publisher(endpoint, curve_secret_key_file=secret).start()
    with pytest.raises(EndpointError, match="not a folder"):
        Publisher(endpoint, curve_secret_key_file=secret, curve_client_keys=secret).start()
    # "any": CURVE without client authentication (any key pair, e.g. a fresh one per socket)
    stop = threading.Event()
    with Publisher(endpoint, curve_secret_key_file=secret, curve_client_keys="any") as publisher:
        keep_publishing(publisher, stop)
        with Subscriber(endpoint, topics="emotion", curve_server_public_key_file=folder / "server.key") as anyone:
            assert anyone.recv(timeout_s=10) is not None
        stop.set()


# ---- the control socket ---------------------------------------------------------------------------


@pytest.fixture
def control(keys: Path):
    server = ControlServer(f"tcp://127.0.0.1:{free_tcp_port()}",
                           curve_secret_key_file=keys / "server.key_secret")
    server.calls = []
    server.register("reset", lambda args: server.calls.append("reset") or {})
    server.register("status.get", lambda args: {"state": "running"}, changes_state=False)
    server.start()
    yield server
    server.stop()


def ask(server: ControlServer, keys: Path, name: str | None, cmd: str, timeout_s: float = 3.0):
    return request(server.endpoint, cmd, timeout_s=timeout_s,
                   curve_server_public_key_file=keys / "server.key",
                   curve_client_secret_key_file=keys / f"{name}.key_secret" if name else None)


def test_control_answers_only_allowed_clients(control: ControlServer, keys: Path) -> None:
    assert ask(control, keys, "alice", "reset") == {"ok": True}
    assert control.calls == ["reset"]
    for name in ("mallory", None):
        with pytest.raises(EndpointError, match="no reply"):
            ask(control, keys, name, "reset", timeout_s=NOTHING_S)
    with pytest.raises(EndpointError, match="no reply"):
        request(control.endpoint, "reset", timeout_s=NOTHING_S)  # plain
    assert control.calls == ["reset"]  # nobody else got through
    assert control.clients_refused >= 2


def test_a_revoked_key_loses_state_changing_commands_on_its_open_connection(
        control: ControlServer, keys: Path) -> None:
    import msgpack

    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    try:
        sock.linger = 0
        sock.curve_serverkey = zmq.auth.load_certificate(keys / "server.key")[0]
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(keys / "alice.key_secret")
        sock.connect(control.endpoint)

        def send(cmd: str) -> dict:
            sock.send(msgpack.packb({"cmd": cmd}))
            assert sock.poll(5000), f"no reply to {cmd}"
            return msgpack.unpackb(sock.recv())

        assert send("reset") == {"ok": True}
        (keys / "clients" / "alice.key").unlink()  # revoked while connected
        reply = send("reset")
        assert reply["ok"] is False and "not on the allow-list" in reply["error"]
        assert send("ping")["ok"] is True  # reading commands still answer
        assert send("status.get") == {"ok": True, "state": "running"}
        assert control.calls == ["reset"] and control.refused == 1
    finally:
        sock.close(0)
        context.term()
    with pytest.raises(EndpointError, match="no reply"):  # and a new connection is refused
        ask(control, keys, "alice", "ping", timeout_s=NOTHING_S)
    assert ask(control, keys, "bob", "reset") == {"ok": True}


# ---- through the command line ---------------------------------------------------------------------


def test_subscribe_with_a_client_key(keys: Path, endpoint: str) -> None:
    stop = threading.Event()
    with Publisher(endpoint, curve_secret_key_file=keys / "server.key_secret") as publisher:
        keep_publishing(publisher, stop)
        try:
            ok = run_cli("subscribe", "--endpoint", endpoint, "--topic", "emotion", "--count", "2",
                         "--timeout", "20", "--server-key", str(keys / "server.key"),
                         "--client-key", str(keys / "alice.key_secret"))
            assert ok.returncode == 0, ok.stderr
            assert len(ok.stdout.splitlines()) == 2 and '"top": "happy"' in ok.stdout
            refused = run_cli("subscribe", "--endpoint", endpoint, "--count", "1", "--timeout", "2",
                              "--server-key", str(keys / "server.key"),
                              "--client-key", str(keys / "mallory.key_secret"))
            assert refused.returncode == 0 and refused.stdout == ""
            bad = run_cli("subscribe", "--endpoint", endpoint, "--client-key",
                          str(keys / "alice.key_secret"))
            assert bad.returncode == 2 and "needs --server-key" in bad.stderr
        finally:
            stop.set()


@pytest.mark.slow
def test_live_with_curve_serves_only_listed_clients(keys: Path) -> None:
    """`streamav live --curve-secret-key` on loopback reads the allow-list beside the key: alice
    gets the stream and can reset, mallory gets nothing and cannot."""
    require_shared_data()
    pub, ctl = free_tcp_port(), free_tcp_port()
    process = subprocess.Popen(
        [*STREAMAV, "live", "--video", str(OBAMA), "--no-model", "--no-preview",
         "--publish", f"tcp://127.0.0.1:{pub}", "--control", f"tcp://127.0.0.1:{ctl}",
         "--curve-secret-key", str(keys / "server.key_secret"), "--duration", "15"],
        stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        endpoint = f"tcp://127.0.0.1:{pub}"
        with Subscriber(endpoint, topics="face", curve_server_public_key_file=keys / "server.key",
                        curve_client_secret_key_file=keys / "alice.key_secret") as alice:
            assert alice.recv(timeout_s=60) is not None
        with Subscriber(endpoint, topics="face", curve_server_public_key_file=keys / "server.key",
                        curve_client_secret_key_file=keys / "mallory.key_secret") as mallory:
            assert mallory.recv(timeout_s=NOTHING_S) is None
        control = f"tcp://127.0.0.1:{ctl}"
        server_key = keys / "server.key"
        assert request(control, "reset", curve_server_public_key_file=server_key,
                       curve_client_secret_key_file=keys / "alice.key_secret")["ok"] is True
        with pytest.raises(EndpointError, match="no reply"):
            request(control, "reset", timeout_s=NOTHING_S, curve_server_public_key_file=server_key,
                    curve_client_secret_key_file=keys / "mallory.key_secret")
    finally:
        process.terminate()
        process.wait(30)


def test_live_with_curve_keys_but_no_allow_list_stops_at_once(tmp_path) -> None:
    make_keys(tmp_path / "keys")  # a server pair and no client
    result = run_cli("live", "--demo", "--no-preview", "--curve-secret-key",
                     str(tmp_path / "keys" / "server.key_secret"),
                     "--publish", f"tcp://127.0.0.1:{free_tcp_port()}")
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("streamav: error: the client allow-list ")
    assert "does not exist" in result.stderr and "streamav keys --client NAME" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
