"""Berth's CNI error hierarchy: each class carries the spec's code, so lower layers raise meaning, not numbers,
and the one edge in :mod:`cni_plugins.skel` turns any of them into the spec's JSON error object. The datapath's
own errors (:mod:`datapath.errors`) get their CNI codes here, in :data:`DATAPATH_CODES`, and nowhere else."""
from __future__ import annotations

from cni_plugins import codes
from datapath import errors as datapath_errors


class CniError(Exception):
    """An error a plugin reports to the runtime: ``{"cniVersion", "code", "msg", "details"}`` on stdout."""

    code = codes.INTERNAL

    def __init__(self, msg: str, details: str = "", *, code: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, msg={self.msg!r}, details={self.details!r})"


class IncompatibleVersion(CniError):
    code = codes.INCOMPATIBLE_VERSION


class UnsupportedField(CniError):
    code = codes.UNSUPPORTED_FIELD


class UnknownContainer(CniError):
    code = codes.UNKNOWN_CONTAINER


class InvalidEnvironment(CniError):
    code = codes.INVALID_ENVIRONMENT


class IOFailure(CniError):
    code = codes.IO_FAILURE


class DecodeFailure(CniError):
    code = codes.DECODE_FAILURE


class InvalidConfig(CniError):
    code = codes.INVALID_CONFIG


class TryAgainLater(CniError):
    code = codes.TRY_AGAIN_LATER


class NotAvailable(CniError):
    """Code 50: the plugin cannot serve ADD now (STATUS)."""

    code = codes.NOT_AVAILABLE


class NotAvailableLimited(CniError):
    """Code 51: not available, and existing containers may have limited connectivity (STATUS)."""

    code = codes.NOT_AVAILABLE_LIMITED


BY_CODE: dict[int, type[CniError]] = {
    cls.code: cls
    for cls in (IncompatibleVersion, UnsupportedField, UnknownContainer, InvalidEnvironment, IOFailure,
                DecodeFailure, InvalidConfig, TryAgainLater, NotAvailable, NotAvailableLimited)
}


def from_dict(data: dict) -> CniError:
    """Rebuild an error a delegate plugin printed, keeping its code."""
    code = data.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else codes.DELEGATE_FAILED
    cls = BY_CODE.get(code, CniError)
    return cls(str(data.get("msg", "")), str(data.get("details", "")), code=code)


# The datapath's failures as CNI codes: the one place the CNI face gives them meaning for the runtime.
DATAPATH_CODES: dict[type[datapath_errors.DatapathError], int] = {
    datapath_errors.LinkError: codes.IO_FAILURE,
    datapath_errors.FirewallError: codes.IO_FAILURE,
    datapath_errors.HostConflict: codes.HOST_CONFLICT,
    datapath_errors.PortConflict: codes.PORT_TAKEN,
    datapath_errors.InvalidInput: codes.INVALID_CONFIG,
}


def from_datapath(exc: datapath_errors.DatapathError) -> CniError:
    """A datapath error as the CNI error of its kind (code 5, an I/O failure, for a kind not listed)."""
    code = next((c for kind, c in DATAPATH_CODES.items() if isinstance(exc, kind)), codes.IO_FAILURE)
    return BY_CODE.get(code, CniError)(exc.msg, exc.details, code=code)
