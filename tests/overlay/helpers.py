"""Helpers for the overlay's namespace tests: reachability, kernel entries, sockets and captures in a netns."""
from __future__ import annotations

import json
import socket
import subprocess
import threading

from tests.waiting import wait_until  # noqa: F401  (the overlay tests import it from here)


def ping(netns: str, address, count: int = 1, wait: int = 1) -> bool:
    done = subprocess.run(["ip", "netns", "exec", netns, "busybox", "ping", "-c", str(count), "-W", str(wait),
                           str(address)], capture_output=True, text=True)
    return done.returncode == 0


def ip_json(netns: str, *argv: str) -> list[dict]:
    done = subprocess.run(["ip", "-n", netns, "-j", *argv], capture_output=True, text=True, check=True)
    return json.loads(done.stdout or "[]")


def fdb_json(netns: str, device: str) -> list[dict]:
    done = subprocess.run(["bridge", "-n", netns, "-j", "fdb", "show", "dev", device], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout or "[]")


def overlay_entries(netns: str, device: str = "berth.1") -> dict:
    """What the daemon programmed: its routes (proto 77), permanent neighbours and remote FDB entries."""
    routes = {r["dst"]: r.get("gateway") for r in ip_json(netns, "route", "show", "proto", "77")}
    neighbours = {n["dst"]: n.get("lladdr") for n in ip_json(netns, "neigh", "show", "dev", device)
                  if "PERMANENT" in n.get("state", [])}
    fdb = {(f["mac"], f["dst"]) for f in fdb_json(netns, device) if f.get("dst")}
    return {"routes": routes, "neighbours": neighbours, "fdb": fdb}


def in_netns(netns: str, func, *args):
    """Run ``func`` in a short-lived thread inside ``netns`` (namespaces are per thread); returns its result.
    A socket made there stays in that namespace when used from any thread."""
    from pyroute2 import netns as pyroute2_netns

    result: dict = {}

    def body():
        try:
            pyroute2_netns.setns(netns, flags=0)
            result["value"] = func(*args)
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def tcp_exchange(server_ns: str, server_ip: str, client_ns: str, payload: bytes = b"berth") -> bytes:
    """Open a TCP connection from ``client_ns`` to a listener in ``server_ns``; returns what the server read."""
    def listener():
        sock = socket.socket()
        sock.bind((server_ip, 0))
        sock.listen(1)
        return sock

    server = in_netns(server_ns, listener)
    client = in_netns(client_ns, lambda: socket.socket())
    try:
        server.settimeout(10)
        client.settimeout(10)
        client.connect(server.getsockname())
        conn, peer = server.accept()
        with conn:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := conn.recv(4096):
                received += chunk
        return received
    finally:
        client.close()
        server.close()


class Capture:
    """A scapy capture inside a namespace, running while the ``with`` body runs."""

    def __init__(self, netns: str, iface: str, bpf: str, count: int = 0, timeout: float = 10.0) -> None:
        self.netns, self.iface, self.bpf, self.count, self.timeout = netns, iface, bpf, count, timeout
        self.packets = []
        self._started = threading.Event()
        self._thread = None
        self._sniffer = None

    def __enter__(self) -> "Capture":
        from scapy.all import AsyncSniffer

        def start():
            self._sniffer = AsyncSniffer(iface=self.iface, filter=self.bpf, count=self.count,
                                         started_callback=self._started.set, store=True)
            self._sniffer.start()

        in_netns(self.netns, start)  # the sniffer's thread inherits the namespace of the thread that made it
        if not self._started.wait(10):
            raise AssertionError("capture did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._sniffer.join(timeout=self.timeout + 5)
        if self._sniffer.running:
            self._sniffer.stop()
        self.packets = list(self._sniffer.results or [])


def cni(command: str, config: dict, *, host: str | None = None, container_id: str = "", netns: str = "",
        ifname: str = "eth0") -> tuple[int, object]:
    """Exec ``berth-overlay`` as a runtime does (inside the namespace ``host`` plays the host); (rc, parsed stdout)."""
    from tests.conftest import REFERENCE_CNI_DIR, VENV_BIN, plugin_path

    env = {"CNI_COMMAND": command, "CNI_PATH": f"{VENV_BIN}:{REFERENCE_CNI_DIR}",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_ARGS": "IgnoreUnknown=1"}
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    argv = [str(plugin_path("berth-overlay"))]
    if host:
        argv = ["ip", "netns", "exec", host, *argv]
    done = subprocess.run(argv, input=json.dumps(config).encode(), env=env, capture_output=True, timeout=60)
    text = done.stdout.decode()
    return done.returncode, (json.loads(text) if text.strip() else None)
