"""Reservations on disk in host-local's exact layout, plus an index so release is not a directory scan.

``<dataDir>/<network>/<ip>`` holds ``<containerID>\\r\\n<ifname>``, ``last_reserved_ip.<set>`` the set's last
address, and ``lock`` is held with flock for every operation, so the reference host-local and berth-ipam can
share one data directory (each reads what the other wrote).

The address files stay the truth. The index (``<dataDir>/.berth-index/<network>/``: one small file per
attachment listing its addresses) is a cache, trusted only while the network directory is exactly as we left
it. Every file created or removed there bumps the directory's mtime to "now"; after each of our own complete
updates we set the mtime one second into the past and record it (with the inode) in ``stamp``. A crash
between an address file and its index entry, or any change made by another tool (host-local knows no index),
leaves an mtime that cannot equal the stamp, and the index is rebuilt from the address files. Network names
never start with a dot, so ``.berth-index`` cannot collide with a network's directory.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
from contextlib import contextmanager
from typing import Iterable, Iterator
from urllib.parse import quote

from .config import DEFAULT_DATA_DIR, IPAddress
from .errors import StoreFailure
from .store import Attachment

LOCK_FILE = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
INDEX_DIR = ".berth-index"
STAMP_FILE = "stamp"
LINE_BREAK = "\r\n"
SEAL_OFFSET_NS = 1_000_000_000


def check_network_name(network: str) -> None:
    """The network name becomes a directory: refuse anything that could escape the data directory."""
    if not network or "/" in network or "\0" in network or network.startswith("."):
        raise StoreFailure(f"network name {network!r} cannot name a directory under the data directory")


def parse_owner(data: bytes) -> Attachment:
    """An address file's owner; an old id-only file (written before ifnames were stored) has ifname ''."""
    text = data.decode("utf-8", errors="replace").strip()
    cid, _, ifname = text.partition(LINE_BREAK)
    return Attachment(cid.strip(), ifname)


def owner_text(attachment: Attachment) -> str:
    return f"{attachment.container_id.strip()}{LINE_BREAK}{attachment.ifname}"


def parse_address_name(name: str) -> IPAddress | None:
    """The address a file in the network directory reserves, or None for ``lock``, ``last_reserved_ip.*`` ..."""
    if name == LOCK_FILE or name.startswith(LAST_RESERVED_PREFIX):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class DiskStore:
    """host-local's disk store with an attachment index. One instance per operation (it holds per-lock state)."""

    def __init__(self, network: str, data_dir: str | None = None) -> None:
        check_network_name(network)
        root = data_dir or DEFAULT_DATA_DIR
        self.dir = os.path.join(root, network)
        self.index_dir = os.path.join(root, INDEX_DIR, network)
        self._validated = False
        self._torn = False  # an address file changed without its index entry: do not seal

    def exists(self) -> bool:
        """Whether this network has a directory yet (DEL and GC of a network never used create nothing)."""
        return os.path.isdir(self.dir)

    def check_usable(self) -> None:
        """Raise StoreFailure unless reservations could be written here now (STATUS)."""
        if self.exists():
            with self.lock():
                probe = self._tmp_path()
                try:
                    os.makedirs(self.index_dir, mode=0o755, exist_ok=True)
                    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
                    os.unlink(probe)
                except OSError as err:
                    raise StoreFailure(f"cannot write under {self.index_dir}: {err.strerror}") from err
            return
        ancestor = os.path.abspath(self.dir)
        while not os.path.lexists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
            raise StoreFailure(f"cannot create {self.dir}: {ancestor} is not a writable directory")

    # -- locking -------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """flock on ``<network>/lock``, opened per operation (flock belongs to the open file description, so
        threads of one process exclude each other as well as separate processes do)."""
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StoreFailure(f"cannot open the data directory {self.dir}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._validated, self._torn = False, False
            yield
        finally:
            os.close(fd)

    # -- the Store protocol ----------------------------------------------------------------------------------
    def reserve(self, attachment: Attachment, ip: IPAddress, range_set: int) -> bool:
        self._ensure_index()
        path = os.path.join(self.dir, str(ip))
        self._torn = True
        try:
            if not self._create_exclusive(path, owner_text(attachment).encode()):
                self._torn = False
                return False
            self._write_entry(attachment, self._read_entry(attachment) + [ip])
            self._torn = False
            self._write_atomic(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_set}"), str(ip).encode())
        except OSError as err:
            raise StoreFailure(f"cannot reserve {ip} in {self.dir}: {err.strerror}") from err
        self._seal()
        return True

    def last_reserved(self, range_set: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_set}"), "rb") as f:
                return ipaddress.ip_address(f.read().decode().strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return None  # as host-local: a missing or torn file only costs round robin one step

    def release(self, attachment: Attachment, ips: Iterable[IPAddress] | None = None) -> list[IPAddress]:
        self._ensure_index()
        freed = self._release_entry(attachment, ips)
        if not freed and ips is None and attachment.ifname:
            freed = self._release_entry(Attachment(attachment.container_id, ""), None)  # host-local's fallback
        self._seal()
        return freed

    def get(self, attachment: Attachment) -> list[IPAddress]:
        self._ensure_index()
        return self._read_entry(attachment)

    def reservations(self) -> dict[IPAddress, Attachment]:
        """Read from the address files themselves (the truth), for GC and STATUS."""
        out: dict[IPAddress, Attachment] = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        except OSError as err:
            raise StoreFailure(f"cannot list {self.dir}: {err.strerror}") from err
        for name in names:
            ip = parse_address_name(name)
            if ip is None:
                continue
            try:
                with open(os.path.join(self.dir, name), "rb") as f:
                    out[ip] = parse_owner(f.read())
            except FileNotFoundError:
                continue
            except OSError as err:
                raise StoreFailure(f"cannot read {name} in {self.dir}: {err.strerror}") from err
        return out

    # -- releasing -------------------------------------------------------------------------------------------
    def _release_entry(self, attachment: Attachment, ips: Iterable[IPAddress] | None) -> list[IPAddress]:
        attachment = Attachment(attachment.container_id.strip(), attachment.ifname)
        held = self._read_entry(attachment)
        wanted = held if ips is None else [ip for ip in held if ip in set(ips)]
        freed = []
        self._torn = True
        try:
            for ip in wanted:
                path = os.path.join(self.dir, str(ip))
                try:
                    with open(path, "rb") as f:
                        owner = parse_owner(f.read())
                except FileNotFoundError:
                    owner = None
                if owner == attachment:
                    os.unlink(path)
                    freed.append(ip)
            if wanted:
                self._write_entry(attachment, [ip for ip in held if ip not in wanted])
            self._torn = False
        except OSError as err:
            raise StoreFailure(f"cannot release {attachment} in {self.dir}: {err.strerror}") from err
        return freed

    # -- the index ---------------------------------------------------------------------------------------------
    def _entry_path(self, attachment: Attachment) -> str:
        name = f"{quote(attachment.container_id.strip(), safe='')}@{quote(attachment.ifname, safe='')}"
        if len(name) > 200:
            import hashlib  # rare: only for very long container ids

            name = "h" + hashlib.sha256(name.encode()).hexdigest() + "@"
        return os.path.join(self.index_dir, name)

    def _read_entry(self, attachment: Attachment) -> list[IPAddress]:
        try:
            with open(self._entry_path(attachment), "rb") as f:
                return [ipaddress.ip_address(line) for line in f.read().decode().split()]
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:  # a torn entry: the stamp check rebuilds it next time
            raise StoreFailure(f"unreadable index entry for {attachment}: {err}") from err

    def _write_entry(self, attachment: Attachment, ips: list[IPAddress]) -> None:
        path = self._entry_path(attachment)
        if ips:
            self._write_atomic(path, "".join(f"{ip}\n" for ip in ips).encode())
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _ensure_index(self) -> None:
        """Trust the index only when the network directory is exactly as our last complete update left it."""
        if self._validated:
            return
        try:
            os.makedirs(self.index_dir, mode=0o755, exist_ok=True)
            if self._read_stamp() != self._dir_stamp():
                self.rebuild_index()
        except OSError as err:
            raise StoreFailure(f"cannot use the index {self.index_dir}: {err.strerror}") from err
        self._validated = True

    def rebuild_index(self) -> None:
        """Throw the index away and derive it again from the address files (caller holds the lock)."""
        stamp = os.path.join(self.index_dir, STAMP_FILE)
        try:
            os.unlink(stamp)
        except FileNotFoundError:
            pass
        for name in os.listdir(self.index_dir):
            os.unlink(os.path.join(self.index_dir, name))
        held: dict[Attachment, list[IPAddress]] = {}
        for ip, owner in sorted(self.reservations().items(), key=lambda item: (item[0].version, item[0])):
            held.setdefault(owner, []).append(ip)
        for owner, ips in held.items():
            self._write_entry(owner, ips)
        self._torn = False
        self._seal()

    def _seal(self) -> None:
        if self._torn:
            return
        st = os.stat(self.dir)
        os.utime(self.dir, ns=(st.st_atime_ns, st.st_mtime_ns - SEAL_OFFSET_NS))
        stamp = self._dir_stamp()
        self._write_atomic(os.path.join(self.index_dir, STAMP_FILE), f"{stamp[0]} {stamp[1]}\n".encode())

    def _dir_stamp(self) -> tuple[int, int]:
        st = os.stat(self.dir)
        return st.st_ino, st.st_mtime_ns

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            with open(os.path.join(self.index_dir, STAMP_FILE), "rb") as f:
                ino, mtime = f.read().split()
                return int(ino), int(mtime)
        except (OSError, ValueError):
            return None

    # -- files -------------------------------------------------------------------------------------------------
    def _tmp_path(self) -> str:
        return os.path.join(self.index_dir, f"tmp.{os.urandom(6).hex()}")

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = self._tmp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError as err:
            os.unlink(tmp)
            if err.errno != errno.EXDEV:
                raise
            with open(path, "wb") as f:  # the index lives on another file system: no atomic rename there
                f.write(data)

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` with its content in one step (link a finished temp file): a reader never sees it
        empty. False when it exists."""
        tmp = self._tmp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                raise
            return self._create_exclusive_in_place(path, data)
        finally:
            os.unlink(tmp)

    @staticmethod
    def _create_exclusive_in_place(path: str, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True
