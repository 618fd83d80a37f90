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


@pytest.mark.parametrize("point", ["_write_entry", "_write_atomic", "_seal"])
def test_a_crash_anywhere_inside_reserve_leaves_an_index_that_finds_the_address(tmp_path, monkeypatch, point):
    reserve(store(tmp_path), B, "10.0.0.3")
    crashing = store(tmp_path)
    monkeypatch.setattr(crashing, point, lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        reserve(crashing, A, "10.0.0.2")
    s = store(tmp_path)
    with s.lock():
        assert s.get(A) == ([ip("10.0.0.2")] if (tmp_path / "net1" / "10.0.0.2").exists() else [])
        s.release(A)
        assert s.get(B) == [ip("10.0.0.3")]
    assert files(tmp_path) == ["10.0.0.3", "last_reserved_ip.0", "lock"]


@pytest.mark.parametrize("point", ["_write_entry", "_seal"])
def test_a_crash_inside_release_leaves_an_index_that_agrees_with_the_files(tmp_path, monkeypatch, point):
    reserve(store(tmp_path), A, "10.0.0.2", "fd00::2")
    crashing = store(tmp_path)
    monkeypatch.setattr(crashing, point, lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash), crashing.lock():
        crashing.release(A, [ip("10.0.0.2")])
    s = store(tmp_path)
    with s.lock():
        assert s.get(A) == [ip("fd00::2")]
        assert s.reserve(B, ip("10.0.0.2"), 0)


def test_a_lost_index_is_rebuilt_from_the_address_files(tmp_path):
    reserve(store(tmp_path), A, "10.0.0.2")
    for name in os.listdir(tmp_path / ".berth-index" / "net1"):
        os.unlink(tmp_path / ".berth-index" / "net1" / name)
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
