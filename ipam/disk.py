"""Reservations on disk in host-local's exact layout, plus an index so release is not a directory scan.

``<dataDir>/<network>/<ip>`` holds ``<containerID>\\r\\n<ifname>``, ``last_reserved_ip.<set>`` the set's last
address, and ``lock`` is held with flock for every operation, so the reference host-local and berth-ipam can
share one data directory (each reads what the other wrote).

The address files stay the truth. The index (``<dataDir>/.berth-index/<network>/<containerID>@<ifname>/<ip>``:
one directory per attachment holding an empty file per address, so every update is a single metadata
operation and nothing is ever rewritten) is a cache, trusted only while the network directory is exactly as
we left it. Every file created or removed there bumps the directory's mtime to "now"; after each of our own
complete updates we set the mtime one second into the past and copy it onto the mtime of ``stamp.<inode>``.
A crash between an address file and its index entry, or any change made by another tool (host-local knows no
index), leaves a directory mtime that cannot equal the stamp's, and the index is rebuilt from the address
files. Network names never start with a dot, so ``.berth-index`` cannot collide with a network's directory.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .addresses import IPAddress
from .config import DEFAULT_DATA_DIR
from .errors import StoreFailure
from .store import Attachment, Store

LOCK_FILE = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
INDEX_DIR = ".berth-index"
STAMP_PREFIX = "stamp."
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


class DiskStore(Store):
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
            with self.lock():  # opening the lock read-write already fails on a read-only file system
                try:  # an unnamed file: proves the directory takes new files without changing it
                    os.close(os.open(self.dir, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644))
                except OSError as err:
                    if not os.access(self.dir, os.W_OK | os.X_OK):
                        raise StoreFailure(f"cannot write in {self.dir}: {err.strerror}") from err
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
        attachment = _normal(attachment)
        path = os.path.join(self.dir, str(ip))
        if os.path.lexists(path):
            return False
        try:
            if not _create_with_content(self.dir, path, owner_text(attachment).encode()):
                return False
        except OSError as err:
            raise StoreFailure(f"cannot reserve {ip} in {self.dir}: {err.strerror}") from err
        self._torn = True  # until the index entry exists too
        try:
            entry = self._entry_dir(attachment)
            os.makedirs(entry, mode=0o755, exist_ok=True)
            os.close(os.open(os.path.join(entry, str(ip)), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            self._torn = False
            # in place, as host-local writes it: a torn file only costs round robin one step. Overwritten, then
            # cut to length: truncating it to empty first makes ext4 flush it on close (~3 ms per ADD here)
            fd = os.open(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_set}"),
                         os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                data = str(ip).encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)
            self._seal()
        except OSError as err:
            raise StoreFailure(f"cannot reserve {ip} in {self.dir}: {err.strerror}") from err
        return True

    def last_reserved(self, range_set: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_set}"), "rb") as f:
                return ipaddress.ip_address(f.read().decode().strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return None  # as host-local: a missing or torn file only costs round robin one step

    def release(self, attachment: Attachment, ips: Iterable[IPAddress] | None = None) -> list[IPAddress]:
        self._ensure_index()
        attachment = _normal(attachment)
        try:
            freed = self._release_entry(attachment, ips)
            if not freed and ips is None and attachment.ifname:  # host-local's fallback: old id-only files
                freed = self._release_entry(Attachment(attachment.container_id, ""), None)
            self._seal()
        except OSError as err:
            raise StoreFailure(f"cannot release {attachment} in {self.dir}: {err.strerror}") from err
        return freed

    def get(self, attachment: Attachment) -> list[IPAddress]:
        self._ensure_index()
        return self._read_entry(_normal(attachment))

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
        held = self._read_entry(attachment)
        chosen = None if ips is None else set(ips)
        wanted = held if chosen is None else [ip for ip in held if ip in chosen]
        entry = self._entry_dir(attachment)
        freed = []
        self._torn = bool(wanted)
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
            _unlink_if_present(os.path.join(entry, str(ip)))
        if wanted and len(wanted) == len(held):
            _rmdir_if_present(entry)
        self._torn = False
        return freed

    # -- the index ---------------------------------------------------------------------------------------------
    def _entry_dir(self, attachment: Attachment) -> str:
        name = f"{_quote(attachment.container_id)}@{_quote(attachment.ifname)}"
        if len(name) > 200:
            import hashlib  # rare: only for very long container ids

            name = "h" + hashlib.sha256(name.encode()).hexdigest() + "@"
        return os.path.join(self.index_dir, name)

    def _read_entry(self, attachment: Attachment) -> list[IPAddress]:
        try:
            names = os.listdir(self._entry_dir(attachment))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StoreFailure(f"cannot read the index entry of {attachment}: {err.strerror}") from err
        found = [ip for ip in map(parse_address_name, names) if ip is not None]
        return sorted(found, key=lambda ip: (ip.version, ip))

    def _ensure_index(self) -> None:
        """Trust the index only when the network directory is exactly as our last complete update left it."""
        if self._validated:
            return
        try:
            ino, mtime = self._dir_stamp()
            try:
                sealed = os.stat(os.path.join(self.index_dir, f"{STAMP_PREFIX}{ino}")).st_mtime_ns
            except FileNotFoundError:
                sealed = None
            if sealed != mtime:
                self.rebuild_index()
        except OSError as err:
            raise StoreFailure(f"cannot use the index {self.index_dir}: {err.strerror}") from err
        self._validated = True

    def rebuild_index(self) -> None:
        """Throw the index away and derive it again from the address files (caller holds the lock)."""
        import shutil

        os.makedirs(self.index_dir, mode=0o755, exist_ok=True)
        names = os.listdir(self.index_dir)
        for name in names:  # stamps first: a crash from here on leaves no stamp, so the next one rebuilds
            if name.startswith(STAMP_PREFIX):
                os.unlink(os.path.join(self.index_dir, name))
        for name in names:
            path = os.path.join(self.index_dir, name)
            if not name.startswith(STAMP_PREFIX):
                shutil.rmtree(path) if os.path.isdir(path) else _unlink_if_present(path)
        for ip, owner in self.reservations().items():
            entry = self._entry_dir(owner)
            os.makedirs(entry, mode=0o755, exist_ok=True)
            os.close(os.open(os.path.join(entry, str(ip)), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        ino, _ = self._dir_stamp()
        os.close(os.open(os.path.join(self.index_dir, f"{STAMP_PREFIX}{ino}"),
                         os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        self._torn = False
        self._seal()

    def _seal(self) -> None:
        """Mark the index as matching the directory: move the directory's mtime one second back (no tool's
        later change can produce that value) and copy it onto the stamp."""
        if self._torn:
            return
        st = os.stat(self.dir)
        sealed = st.st_mtime_ns - SEAL_OFFSET_NS
        try:
            os.utime(self.dir, ns=(st.st_atime_ns, sealed))
        except PermissionError:  # not the directory's owner: stay unsealed, so every operation rebuilds
            return
        sealed = os.stat(self.dir).st_mtime_ns  # as the file system stored it (its granularity)
        os.utime(os.path.join(self.index_dir, f"{STAMP_PREFIX}{st.st_ino}"), ns=(sealed, sealed))

    def _dir_stamp(self) -> tuple[int, int]:
        st = os.stat(self.dir)
        return st.st_ino, st.st_mtime_ns


def _create_with_content(directory: str, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` in one step, False when it exists: the content is written to an unnamed
    file (O_TMPFILE) that is then linked in, so no reader and no crash ever sees the file empty."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    except OSError:  # a file system without O_TMPFILE: create, then write (host-local's way)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True
    try:
        os.write(fd, data)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # a dir fd makes Python use linkat(AT_SYMLINK_FOLLOW), which links the unnamed file itself
            os.link(f"/proc/self/fd/{fd}", os.path.basename(path), dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(dir_fd)
        return True
    except FileExistsError:
        return False
    finally:
        os.close(fd)


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _quote(text: str) -> str:
    """Percent-encode all but ``[A-Za-z0-9_.-]``, so ``@`` separates id and ifname and no name holds a ``/``."""
    return "".join(c if c in _PLAIN else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _normal(attachment: Attachment) -> Attachment:
    """host-local trims the container id before writing it; so do we, everywhere."""
    return Attachment(attachment.container_id.strip(), attachment.ifname)


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir_if_present(path: str) -> None:
    try:
        os.rmdir(path)
    except (FileNotFoundError, OSError):
        pass  # not empty: another address of the attachment is still listed
