"""The datapath's own failures, by meaning: each face maps them once to its replies (the CNI face to the spec's
codes in ``cni_plugins.errors``, the Docker face to its error answers in ``docker_plugin.errors``).
Standard library only (no imports at all): it is on the CNI cold path."""


class DatapathError(Exception):
    """A datapath operation failed: ``msg`` says what, ``details`` (may be empty) says more."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class LinkError(DatapathError):
    """The kernel refused or lost a link, address, route or sysctl (netlink, /proc/sys)."""


class HostConflict(DatapathError):
    """A host object is in the way: a non-bridge link by the bridge's name, an interface name already taken,
    a foreign address on the bridge."""


class FirewallError(DatapathError):
    """A firewall backend refused a change or could not be read."""


class PortConflict(DatapathError):
    """A host port is already published by another attachment (of either face)."""


class InvalidInput(DatapathError):
    """A value handed to the datapath is wrong (a port mapping, an interface name); the message names it."""
