"""Who may change the service catalogue through the HTTP API: tokens as Consul clients send them, and the rule
that container endpoints belong to the CNI chain.

Berth follows a small part of Consul's ACL model, the part a host needs:

- a **default policy** (``allow`` or ``deny``) for callers without a token;
- one **management token** that may do anything (created on first start, in a root-only file);
- **service tokens**: ``{"secret": ..., "service_prefix": "web"}`` may register, deregister and update checks of
  services whose name starts with the prefix (Consul's ``service_prefix "web" { policy = "write" }``);
- every valid token may read everything: the same catalogue is served to anyone by DNS, so hiding it from HTTP
  readers would protect nothing. Under ``deny`` a read without a valid token is refused.

Whatever the default policy, an endpoint that berth-register put in through the root-only agent socket can be
changed or removed over HTTP only with the management token, and a name a container endpoint carries (its
service, name or an alias) gains HTTP-registered instances only with a token allowed to write that name. The rule
holds in time too: an HTTP registration made *before* a container claimed its name or address, by a caller whose
token did not grant that name, is withdrawn when the container appears (:func:`squatters`) — otherwise anyone could
reserve tomorrow's container names and answer for them.

The decisions are pure functions of (identity, what is asked); the token file is read at the edge.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

log = logging.getLogger(__name__)

POLICIES = ("allow", "deny")
RELOAD_EVERY = 1.0


class AclError(Exception):
    """The request is not allowed; ``message`` is what the client sees (Consul's wording)."""

    def __init__(self, message: str = "Permission denied") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Identity:
    """Who is asking: ``anonymous`` (no token), ``management``, or a service token with its prefix."""

    kind: str                      # "anonymous" | "management" | "service"
    service_prefix: str = ""

    @property
    def is_management(self) -> bool:
        return self.kind == "management"

    @property
    def grant(self) -> str | None:
        """The names the token itself lets its holder write, as kept with an HTTP registration: ``""`` every name
        (management), a service prefix, or None (nothing beyond the default policy)."""
        if self.is_management:
            return ""
        return self.service_prefix if self.kind == "service" else None

    def may_write_name(self, service: str) -> bool:
        """Write granted by the token itself (not by the default policy)."""
        return granted(self.grant, service)


def granted(grant: str | None, name: str) -> bool:
    """Does a registrant's token grant (see :attr:`Identity.grant`) cover ``name``?"""
    return grant is not None and name.startswith(grant)


ANONYMOUS = Identity("anonymous")
MANAGEMENT = Identity("management")


@dataclass(frozen=True)
class AclTokens:
    """The parsed token file."""

    management: str
    services: tuple[tuple[str, str], ...] = ()   # (secret, service prefix)

    def identify(self, secret: str) -> Identity | None:
        """The identity of a presented secret, or None when no token matches. Every known token is compared
        (in constant time), so the time taken says nothing about which one was near."""
        found: Identity | None = None
        if hmac.compare_digest(secret.encode(), self.management.encode()):
            found = MANAGEMENT
        for known, prefix in self.services:
            if hmac.compare_digest(secret.encode(), known.encode()) and found is None:
                found = Identity("service", prefix)
        return found


def parse_tokens(data: object) -> AclTokens:
    if not isinstance(data, Mapping):
        raise ValueError("token file: not a JSON object")
    management = data.get("management")
    if not isinstance(management, str) or len(management) < 16:
        raise ValueError("token file: 'management' must be a secret of at least 16 characters")
    services = []
    for i, entry in enumerate(data.get("tokens") or ()):
        if not isinstance(entry, Mapping):
            raise ValueError(f"token file: tokens[{i}] is not an object")
        secret, prefix = entry.get("secret"), entry.get("service_prefix")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ValueError(f"token file: tokens[{i}].secret must be at least 16 characters")
        if not isinstance(prefix, str):
            raise ValueError(f"token file: tokens[{i}].service_prefix must be a string")
        services.append((secret, prefix.lower()))
    return AclTokens(management, tuple(services))


def ensure_token_file(path: Path) -> None:
    """Create the file with a fresh management token when absent: mode 0600, created exclusively."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"management": secrets.token_hex(16), "tokens": []}, indent=2).encode() + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    log.info("created ACL token file %s with a new management token", path)


def read_token_file(path: Path) -> AclTokens:
    """Read the token file, refusing one that another user owns or could read or write."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(f"{path}: owned by uid {st.st_uid}, not by the agent's user")
        if st.st_mode & 0o077:
            raise ValueError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read it; chmod 600")
        try:
            return parse_tokens(json.loads(fh.read(1 << 20)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None


def presented_token(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The token as Consul clients send it: X-Consul-Token, ``Authorization: Bearer``, or ``?token=``."""
    token = headers.get("X-Consul-Token")
    if not token:
        auth = headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
    if not token:
        token = (query.get("token") or [""])[0]
    return token or None


class Acl:
    """The default policy and the tokens, reloaded when the file changes (checked at most once a second)."""

    def __init__(self, policy: str, token_file: str | os.PathLike) -> None:
        if policy not in POLICIES:
            raise ValueError(f"acl default policy: {policy!r} is not allow or deny")
        self.policy = policy
        self.path = Path(token_file)
        ensure_token_file(self.path)
        self._tokens = read_token_file(self.path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _file_stamp(self) -> tuple:
        try:
            st = os.stat(self.path)
        except OSError:
            return ()
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _current(self) -> AclTokens:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= RELOAD_EVERY:
                self._checked = now
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    try:
                        self._tokens = read_token_file(self.path)
                        log.info("reloaded ACL tokens from %s", self.path)
                    except (OSError, ValueError) as exc:  # keep the last good tokens
                        log.error("ACL token file not reloaded: %s", exc)
                    self._stamp = stamp
            return self._tokens

    def identify(self, secret: str | None) -> Identity:
        if secret is None:
            return ANONYMOUS
        identity = self._current().identify(secret)
        if identity is None:
            raise AclError("ACL not found")
        return identity

    # -- decisions (pure given the identity) -----------------------------------------------------------
    def check_read(self, who: Identity) -> None:
        if self.policy == "deny" and who is ANONYMOUS:
            raise AclError()

    def check_write(self, who: Identity, service: str) -> None:
        """As Consul: the token's own rules first, then the default policy for what they do not cover."""
        if who.may_write_name(service) or self.policy == "allow":
            return
        raise AclError()


class ContainerClaims:
    """The names and addresses that container endpoints hold across the cluster, kept up to date from the
    discovery view's changes (a registration must not scan every record to learn them)."""

    def __init__(self) -> None:
        self._records: dict[str, object] = {}      # store key -> container EndpointRecord
        self._names: Counter[str] = Counter()
        self._addresses: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()

    def apply(self, change) -> None:
        """Feed a :class:`discovery.viewstate.ViewChange` (``added``/``updated`` new records, ``removed`` keys)."""
        with self._lock:
            for key in change.removed:
                self._set(key, None)
            for key, record in (*change.added.items(), *change.updated.items()):
                self._set(key, record if record.container_id else None)

    def _set(self, key: str, record) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            self._count(old, -1)
        if record is not None:
            self._records[key] = record
            self._count(record, +1)

    def _count(self, record, step: int) -> None:
        for name in {record.service, record.name, *record.aliases}:
            self._names[name] += step
            if self._names[name] <= 0:
                del self._names[name]
        for address in record.addresses:
            services = self._addresses.setdefault(address, Counter())
            services[record.service] += step
            if services[record.service] <= 0:
                del services[record.service]
            if not services:
                del self._addresses[address]

    def holds_name(self, name: str) -> bool:
        with self._lock:
            return name in self._names

    def services_at(self, address: str) -> set[str]:
        with self._lock:
            return set(self._addresses.get(address, ()))


def container_addresses(records: Iterable) -> dict[str, set[str]]:
    """address → the services of the container endpoints that hold it (an HTTP record on the same address
    would add itself to the address's reverse name)."""
    out: dict[str, set[str]] = {}
    for record in records:
        if record.container_id:
            for address in record.addresses:
                out.setdefault(address, set()).add(record.service)
    return out


def container_names(records: Iterable) -> set[str]:
    """Every name a container endpoint carries: service, name and aliases of records that came from CNI."""
    names: set[str] = set()
    for record in records:
        if record.container_id:
            names.update((record.service, record.name, *record.aliases))
    return names


def squatters(endpoints: Mapping[str, object], claims: ContainerClaims) -> list[str]:
    """IDs of this agent's HTTP-registered endpoints that now stand on a container's name or address without a
    token grant for it (``endpoints``: id → :class:`discovery.local.LocalEndpoint`)."""
    out = []
    for endpoint_id, endpoint in endpoints.items():
        grant, record = endpoint.grant, endpoint.record
        if endpoint.source != "api" or grant == "":
            continue
        on_name = claims.holds_name(record.service) and not granted(grant, record.service)
        on_address = any(services and not any(granted(grant, s) for s in services)
                         for services in map(claims.services_at, record.addresses))
        if on_name or on_address:
            out.append(endpoint_id)
    return sorted(out)
