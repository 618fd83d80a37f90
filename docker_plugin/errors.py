"""The Docker face's one error type: the message goes back to Docker as ``{"Err": ...}`` and on to the user."""
from __future__ import annotations


class DriverError(Exception):
    """A request Berth refuses (``status`` 400), names nothing it knows (404), or collides with what exists (409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
