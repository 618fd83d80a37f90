"""The IPAM library's exceptions; the CNI face maps each class to one spec error code."""
from __future__ import annotations


class IpamError(Exception):
    """Base of every error the IPAM library raises on purpose."""


class ConfigError(IpamError, ValueError):
    """The IPAM configuration is invalid; the message names the field (host-local's wording where it has one)."""


class RangeExhausted(IpamError):
    """A range set has no free address left."""


class AddressUnavailable(IpamError):
    """A requested address cannot be given: taken, the gateway, or outside every range set."""


class DuplicateAllocation(IpamError):
    """The attachment already holds an address in this range set (the spec forbids a second ADD)."""


class StoreFailure(IpamError):
    """The store cannot be read or written (disk full, permissions, a data directory that is not one)."""


class StoreBusy(StoreFailure):
    """The shared datastore cannot answer now (unreachable, electing a leader): the runtime should retry (CNI 11)."""
