"""Which machine this is, for records several hosts write under names they are configured with: two hosts given
one name would otherwise take each other's keys silently."""
from __future__ import annotations


def machine_id() -> str:
    """This machine's systemd/D-Bus machine ID ("" if it has none)."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read(64).strip()
        except OSError:
            continue
        if text:
            return text
    return ""


def other_machine(recorded: str, mine: str) -> str | None:
    """``recorded`` if it names a machine other than ``mine`` (either unknown: no conflict can be told)."""
    return recorded if recorded and mine and recorded != mine else None
