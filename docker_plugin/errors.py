"""The Docker face's one error type: the message goes back to Docker as ``{"Err": ...}`` and on to the user.
The datapath's errors become it in :func:`from_datapath`, the one place this face gives them a status."""
from __future__ import annotations

from datapath import errors as datapath_errors


class DriverError(Exception):
    """A request Berth refuses (``status`` 400), names nothing it knows (404), or collides with what exists (409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# The datapath's failures as this face's statuses: the caller's fault (400), a collision (409), or the host's (500).
DATAPATH_STATUS: dict[type[datapath_errors.DatapathError], int] = {
    datapath_errors.InvalidInput: 400,
    datapath_errors.HostConflict: 409,
    datapath_errors.PortConflict: 409,
    datapath_errors.LinkError: 500,
    datapath_errors.FirewallError: 500,
}


def from_datapath(exc: datapath_errors.DatapathError) -> DriverError:
    """A datapath error as the driver's, its message intact and its details in brackets (500 for a kind not
    listed)."""
    status = next((s for kind, s in DATAPATH_STATUS.items() if isinstance(exc, kind)), 500)
    return DriverError(exc.msg + (f" ({exc.details})" if exc.details else ""), status)


def text(request: dict, key: str, required: bool = True) -> str:
    value = request.get(key)
    if value is None or value == "":
        if required:
            raise DriverError(f"{key}: missing")
        return ""
    if not isinstance(value, str):
        raise DriverError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def mapping(request: dict, key: str) -> dict:
    value = request.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DriverError(f"{key}: expected an object, got {type(value).__name__}")
    return value
