"""The small interface every reservation store provides, and the in-memory one the pure tests use.

Shaped after host-local's ``Store``: the allocator takes the lock, then reserves address by address, so a store
only needs to answer "is this one free? take it" atomically. ``disk.DiskStore`` keeps host-local's layout;
``cluster.ClusterStore`` implements the same methods over the shared datastore.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

from .addresses import IPAddress
from .record import Record


class Attachment(Record, order=True):
    """Who holds an address: a container's interface. ``ifname == ""`` is an old-format reservation (id only)."""

    container_id: str
    ifname: str

    def covers(self, other: Attachment) -> bool:
        """True when ``other`` (a reservation's owner) belongs to this attachment, old id-only format included."""
        return self.container_id == other.container_id and other.ifname in ("", self.ifname)


class Store:
    """Reservation store. Every method except ``lock`` expects the caller to hold ``lock()``.

    A plain base class rather than a ``typing.Protocol``: importing ``typing`` is a cost on every cold CNI call."""

    def lock(self) -> AbstractContextManager[None]:
        """Hold the store's lock (across processes and threads) for one operation."""
        raise NotImplementedError

    def reserve(self, attachment: Attachment, ip: IPAddress, range_set: int) -> bool:
        """Take ``ip`` for ``attachment``; False when it is already taken. Records it as the set's last reserved."""
        raise NotImplementedError

    def last_reserved(self, range_set: int) -> IPAddress | None:
        """The address most recently reserved in range set ``range_set`` (round robin continues after it)."""
        raise NotImplementedError

    def release(self, attachment: Attachment, ips: Iterable[IPAddress] | None = None) -> list[IPAddress]:
        """Free the attachment's reservations (only ``ips`` when given); returns what was freed. Idempotent."""
        raise NotImplementedError

    def get(self, attachment: Attachment) -> list[IPAddress]:
        """The addresses ``attachment`` holds."""
        raise NotImplementedError

    def reservations(self) -> dict[IPAddress, Attachment]:
        """Every reservation: address → owner."""
        raise NotImplementedError

    # A store with a placement policy of its own (cluster mode's blocks) also provides
    # ``candidates(range_set, idx) -> Iterator[(Range, ip)]``; the allocator then asks it instead of going round
    # robin after ``last_reserved``.


class MemoryStore(Store):
    """A store in a dict, for the allocator's tests and for callers that need no persistence."""

    def __init__(self) -> None:
        import threading  # not at the top: the disk store on a cold CNI call needs none

        self._mutex = threading.Lock()
        self._owner: dict[IPAddress, Attachment] = {}
        self._last: dict[int, IPAddress] = {}

    @contextmanager
    def lock(self) -> Iterator[None]:
        with self._mutex:
            yield

    def reserve(self, attachment: Attachment, ip: IPAddress, range_set: int) -> bool:
        if ip in self._owner:
            return False
        self._owner[ip] = attachment
        self._last[range_set] = ip
        return True

    def last_reserved(self, range_set: int) -> IPAddress | None:
        return self._last.get(range_set)

    def release(self, attachment: Attachment, ips: Iterable[IPAddress] | None = None) -> list[IPAddress]:
        wanted = None if ips is None else set(ips)
        freed = [ip for ip, owner in self._owner.items()
                 if attachment.covers(owner) and (wanted is None or ip in wanted)]
        for ip in freed:
            del self._owner[ip]
        return freed

    def get(self, attachment: Attachment) -> list[IPAddress]:
        return [ip for ip, owner in self._owner.items() if owner == attachment]

    def reservations(self) -> dict[IPAddress, Attachment]:
        return dict(self._owner)
