"""The nftables backend: tables ``inet berth-nat`` (ipMasq), ``inet berth-portmap`` (host ports) and
``bridge berth-macspoof`` (macspoofchk).

Commands go to libnftables in process (one transaction per call, no ``nft`` process on the hot path); where the
library is missing, the same text goes to ``nft -f -``. Each call uses its own library context, so handlers may run
in parallel threads; the kernel serialises the transactions.
"""
from __future__ import annotations

import ctypes
import json
import subprocess
from collections.abc import Iterable

from datapath.errors import FirewallError
from datapath.firewall import (Backend, Dnat, MacSpoofCheck, Masquerade, Rule, SnatToContainer,
                               TaggedRule, comment_for, family_of, tag_of)

# role → (family, table)
TABLES = {
    "nat": ("inet", "berth-nat"),
    "portmap": ("inet", "berth-portmap"),
    "macspoof": ("bridge", "berth-macspoof"),
}
_OUTPUT_HANDLE, _OUTPUT_JSON = 1 << 3, 1 << 4
_lib: ctypes.CDLL | None = None
_lib_missing = False


def _library() -> ctypes.CDLL | None:
    global _lib, _lib_missing
    if _lib is None and not _lib_missing:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError:
            _lib_missing = True
            return None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _lib = lib
    return _lib


def run(commands: str, json_output: bool = False) -> tuple[int, str, str]:
    """Run nft commands as one transaction; returns (rc, output, error text)."""
    lib = _library()
    if lib is None:
        argv = ["nft", "-j", "-a", "-f", "-"] if json_output else ["nft", "-f", "-"]
        proc = subprocess.run(argv, input=commands, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise FirewallError("libnftables: cannot create a context")
    try:
        if json_output:
            lib.nft_ctx_output_set_flags(ctx, _OUTPUT_HANDLE | _OUTPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        return rc, out, err
    finally:
        lib.nft_ctx_free(ctx)


def _ip(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _proto_match(protocol: str, port: int, direction: str = "dport") -> str:
    return f"{protocol} {direction} {port}"


def render(rule: Rule) -> tuple[str, str]:
    """(chain, rule text without comment) for one abstract rule."""
    if isinstance(rule, MacSpoofCheck):
        return "prerouting", f'iifname "{rule.host_ifname}" ether saddr != {rule.mac} drop'
    family = family_of(rule)
    ip = _ip(family)
    if isinstance(rule, Masquerade):
        multicast = "224.0.0.0/4" if family == 4 else "ff00::/8"
        return "postrouting", (f"{ip} saddr {rule.source} {ip} daddr != {rule.subnet} "
                               f"{ip} daddr != {multicast} masquerade")
    if isinstance(rule, Dnat):
        dest = f"{rule.container_ip}:{rule.container_port}" if family == 4 \
            else f"[{rule.container_ip}]:{rule.container_port}"
        match = f"{ip} daddr {rule.host_ip}" if rule.host_ip else f"meta nfproto {'ipv4' if family == 4 else 'ipv6'}"
        return "hostports", f"{match} {_proto_match(rule.protocol, rule.host_port)} dnat {ip} to {dest}"
    assert isinstance(rule, SnatToContainer)
    target = f"{ip} daddr {rule.container_ip} {_proto_match(rule.protocol, rule.container_port)}"
    if rule.source == "localhost":
        return "postrouting", f"{ip} saddr 127.0.0.0/8 {target} masquerade"
    if rule.source == "hairpin":
        return "postrouting", f"{ip} saddr {rule.container_ip} {target} masquerade"
    return "postrouting", f"ct status dnat {target} masquerade"


class NftBackend(Backend):
    def __init__(self, role: str) -> None:
        self.family, self.table = TABLES[role]
        self.role = role
        self.qualified = f"{self.family} {self.table}"

    def _skeleton(self) -> str:
        t = self.qualified
        if self.role == "macspoof":
            return (f"add table {t}\n"
                    f"add chain {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n")
        lines = [f"add table {t}",
                 f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"]
        if self.role == "portmap":
            # The jumps are rewritten in the same transaction, so parallel ADDs never duplicate them.
            lines += [f"add chain {t} hostports",
                      f"add chain {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}",
                      f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
                      f"flush chain {t} prerouting", f"flush chain {t} output",
                      f"add rule {t} prerouting fib daddr type local jump hostports",
                      f"add rule {t} output fib daddr type local jump hostports"]
        return "\n".join(lines) + "\n"

    def add(self, tag: str, rules: Iterable[Rule]) -> None:
        text = []
        for rule in rules:
            chain, body = render(rule)
            text.append(f'add rule {self.qualified} {chain} {body} comment "{comment_for(tag, rule)}"\n')
        if self.role != "portmap":
            # The table and chain are there after a network's first ADD: the rules alone skip re-declaring the
            # chain, a kernel update that waits for an RCU grace period (~14 ms here). Missing, nothing is applied
            # and the full text follows. (portmap's skeleton also rewrites its jumps: always sent.)
            rc, _, err = run("".join(text))
            if rc == 0:
                return
        rc, _, err = run(self._skeleton() + "".join(text))
        if rc != 0:
            raise FirewallError(f"nftables refused the rules of {tag}: {err.strip()}")

    def _listing(self) -> list[dict]:
        rc, out, err = run(f"list table {self.qualified}", json_output=True)
        if rc != 0:
            if "No such file" in err:
                return []
            raise FirewallError(f"cannot list nftables table {self.table}: {err.strip()}")
        rules = []
        for item in json.loads(out).get("nftables", []):
            rule = item.get("rule")
            if rule and isinstance(rule.get("comment"), str):
                rules.append(rule)
        return rules

    def rules(self, prefix: str) -> list[TaggedRule]:
        out = []
        for rule in self._listing():
            if rule["comment"].startswith(prefix):
                out.append(TaggedRule(comment=rule["comment"]))
        return out

    def remove(self, tags: Iterable[str]) -> None:
        tags = set(tags)
        for attempt in range(3):  # a parallel DEL may take a handle first: list again
            doomed = [r for r in self._listing() if tag_of(r["comment"]) in tags]
            if not doomed:
                return
            text = "".join(f"delete rule {self.qualified} {r['chain']} handle {r['handle']}\n" for r in doomed)
            rc, _, err = run(text)
            if rc == 0:
                return
        raise FirewallError(f"cannot delete nftables rules of {sorted(tags)}: {err.strip()}")

    def drop_table(self) -> None:
        """Remove the whole table (tests and uninstall); absent is fine."""
        run(f"delete table {self.qualified}")
