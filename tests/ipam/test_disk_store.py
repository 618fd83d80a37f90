"""The disk store: host-local's layout byte for byte, and an index that stays right after crashes and after
other tools (host-local) change the directory behind its back. Files in a temp dir only: no root needed."""
import os
import threading
from ipaddress import ip_address as ip

import pytest

from ipam.allocator import allocate
from ipam.config import parse_ipam_config
from ipam.disk import DiskStore
from ipam.errors import StoreFailure
from ipam.resolv import parse_resolv_conf
from ipam.store import Attachment

A, B = Attachment("ctr-a", "eth0"), Attachment("ctr-b", "eth0")


def store(tmp_path, network="net1"):
    return DiskStore(network, str(tmp_path))


def reserve(s, attachment, *ips, range_set=0):
    with s.lock():
        return [s.reserve(attachment, ip(x), range_set) for x in ips]


def files(tmp_path, network="net1"):
    return sorted(os.listdir(tmp_path / network))


def test_layout_is_host_locals(tmp_path):
    s = store(tmp_path)
    assert reserve(s, A, "10.0.0.2") == [True]
    assert reserve(s, B, "fd00::2", range_set=1) == [True]
    assert files(tmp_path) == ["10.0.0.2", "fd00::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    assert (tmp_path / "net1" / "10.0.0.2").read_bytes() == b"ctr-a\r\neth0"
    assert (tmp_path / "net1" / "last_reserved_ip.1").read_bytes() == b"fd00::2"
    assert reserve(s, B, "10.0.0.2") == [False]
    assert (tmp_path / "net1" / "10.0.0.2").read_bytes() == b"ctr-a\r\neth0"


def test_release_get_and_reservations(tmp_path):
    s = store(tmp_path)
    reserve(s, A, "10.0.0.2", "fd00::2")
    reserve(s, B, "10.0.0.3")
    with s.lock():
        assert sorted(map(str, s.get(A))) == ["10.0.0.2", "fd00::2"]
        assert s.reservations() == {ip("10.0.0.2"): A, ip("fd00::2"): A, ip("10.0.0.3"): B}
        assert sorted(map(str, s.release(A))) == ["10.0.0.2", "fd00::2"]
        assert s.release(A) == []          # idempotent
        assert s.get(A) == []
    assert files(tmp_path) == ["10.0.0.3", "last_reserved_ip.0", "lock"]


def test_release_of_only_some_addresses_keeps_the_rest(tmp_path):
    s = store(tmp_path)
    reserve(s, A, "10.0.0.2", "fd00::2")
    with s.lock():
        assert s.release(A, [ip("fd00::2")]) == [ip("fd00::2")]
        assert s.get(A) == [ip("10.0.0.2")]


def test_files_written_by_another_tool_are_seen_at_once(tmp_path):
    """host-local knows no index: a reservation it adds or removes right after ours must still be found."""
    s = store(tmp_path)
    reserve(s, A, "10.0.0.2")
    (tmp_path / "net1" / "10.0.0.9").write_bytes(b"ctr-b\r\neth0")     # same clock tick as our write
    (tmp_path / "net1" / "10.0.0.2").unlink()
    with s.lock():
        assert s.get(B) == [ip("10.0.0.9")] and s.get(A) == []
        assert s.release(B) == [ip("10.0.0.9")]
    assert files(tmp_path) == ["last_reserved_ip.0", "lock"]


def test_old_id_only_files_are_released_by_container_id(tmp_path):
    s = store(tmp_path)
    reserve(s, B, "10.0.0.3")
    os.makedirs(tmp_path / "net1", exist_ok=True)
    (tmp_path / "net1" / "10.0.0.7").write_bytes(b"ctr-a")
    with s.lock():
        assert s.release(A) == [ip("10.0.0.7")]
    assert files(tmp_path) == ["10.0.0.3", "last_reserved_ip.0", "lock"]


class Crash(BaseException):
    """Stands in for SIGKILL at one point inside an operation (the exec tests kill real processes)."""


class CrashingOs:
    """``os`` for ipam.disk, dying at the n-th call that changes the file system."""

    MUTATING = {"open", "write", "unlink", "rmdir", "makedirs", "utime", "replace", "link", "mkdir"}

    def __init__(self, crash_at):
        self.calls, self.crash_at = 0, crash_at

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in self.MUTATING:
            return real

        def counted(*args, **kwargs):
            self.calls += 1
            if self.calls == self.crash_at:
                raise Crash(f"{name} #{self.calls}")
            return real(*args, **kwargs)
        return counted


def truth(tmp_path, attachment):
    owners = store(tmp_path).reservations()
    return sorted((ip_ for ip_, owner in owners.items() if owner == attachment), key=lambda a: (a.version, a))


OPERATIONS = {
    "reserve two addresses": lambda s: [s.reserve(A, ip("10.0.0.2"), 0), s.reserve(A, ip("fd00::2"), 1)],
    "release": lambda s: s.release(A),
    "release one address": lambda s: s.release(A, [ip("10.0.0.5")]),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_crash_at_any_point_leaves_an_index_that_agrees_with_the_address_files(tmp_path, monkeypatch, operation):
    """Crash at the 1st, 2nd, ... file-system change until the operation completes; after each crash a fresh
    store must see exactly what the address files say, and release must then free exactly those."""
    import ipam.disk

    for crash_at in range(1, 100):
        data = tmp_path / str(crash_at)
        reserve(store(data), B, "10.0.0.3")
        if operation.startswith("release"):
            reserve(store(data), A, "10.0.0.5", "fd00::5")
        fake = CrashingOs(crash_at)
        monkeypatch.setattr(ipam.disk, "os", fake)
        crashed = False
        try:
            s = store(data)
            with s.lock():
                OPERATIONS[operation](s)
        except Crash:
            crashed = True
        finally:
            monkeypatch.setattr(ipam.disk, "os", os)
        fresh = store(data)
        with fresh.lock():
            assert fresh.get(A) == truth(data, A), crash_at
            assert fresh.get(B) == [ip("10.0.0.3")]
            fresh.release(A)
        assert files(data) == ["10.0.0.3", "last_reserved_ip.0"] + (
            ["last_reserved_ip.1"] if "last_reserved_ip.1" in files(data) else []) + ["lock"]
        if not crashed:
            break
    assert not crashed and crash_at > 3


def test_a_lost_index_is_rebuilt_from_the_address_files(tmp_path):
    reserve(store(tmp_path), A, "10.0.0.2")
    import shutil

    shutil.rmtree(tmp_path / ".berth-index")
    s = store(tmp_path)
    with s.lock():
        assert s.get(A) == [ip("10.0.0.2")]


def test_threads_with_their_own_store_never_share_an_address(tmp_path):
    range_sets = parse_ipam_config({"subnet": "10.0.0.0/27"}, "net1").range_sets
    got, failures = [], []

    def worker(n):
        s = store(tmp_path)
        try:
            with s.lock():
                got.extend(str(a.address) for a in allocate(s, range_sets, Attachment(f"c{n}", "eth0")))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            failures.append(type(err).__name__)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 29 and failures == ["RangeExhausted"] * 3


@pytest.mark.parametrize("network", ["../escape", ".hidden", "", "a/b"])
def test_network_names_that_would_leave_the_data_dir_are_refused(tmp_path, network):
    with pytest.raises(StoreFailure):
        DiskStore(network, str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


def test_an_unusable_data_dir_is_reported(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    s = DiskStore("net1", str(tmp_path / "file"))
    with pytest.raises(StoreFailure):
        s.check_usable()
    with pytest.raises(StoreFailure):
        with s.lock():
            pass
    DiskStore("net1", str(tmp_path / "new")).check_usable()
    assert not (tmp_path / "new").exists()


def test_resolv_conf_is_read_as_host_local_reads_it():
    found = parse_resolv_conf("# c\n; c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain a.example\n"
                              "domain b.example\nsearch x.example y.example\nsearch z\noptions ndots:2 rotate\nbogus\n")
    assert found.nameservers == ("10.0.0.53", "fd00::53") and found.domain == "b.example"
    assert found.search == ("x.example", "y.example", "z") and found.options == ("ndots:2", "rotate")


def test_ids_and_ifnames_with_separators_never_share_an_index_entry(tmp_path):
    odd, other = Attachment("weird@id/x", "e@1"), Attachment("weird", "id/x@e@1")
    s = store(tmp_path)
    reserve(s, odd, "10.0.0.2")
    reserve(s, other, "10.0.0.3")
    with s.lock():
        assert s.get(odd) == [ip("10.0.0.2")] and s.get(other) == [ip("10.0.0.3")]
        assert s.release(odd) == [ip("10.0.0.2")]
        assert s.get(other) == [ip("10.0.0.3")]


def test_without_the_right_to_set_the_directory_mtime_the_index_is_rebuilt_each_time(tmp_path, monkeypatch):
    """A user who may write but does not own the directory cannot seal it: slower, never wrong."""
    import ipam.disk

    class NoUtimeOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def utime(path, *args, **kwargs):
            if str(path).endswith("net1"):
                raise PermissionError(1, "Operation not permitted")
            return os.utime(path, *args, **kwargs)

    monkeypatch.setattr(ipam.disk, "os", NoUtimeOs())
    reserve(store(tmp_path), A, "10.0.0.2")
    (tmp_path / "net1" / "10.0.0.9").write_bytes(b"ctr-b\r\neth0")
    s = store(tmp_path)
    with s.lock():
        assert s.get(A) == [ip("10.0.0.2")] and s.release(B) == [ip("10.0.0.9")]
