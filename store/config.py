"""Where every Berth command finds the datastore unless told otherwise: one answer, so the agent, the DNS
server and the overlay daemon on a host meet in the same file without each repeating ``--store``."""
from __future__ import annotations

import os

DEFAULT_STORE_URL = "sqlite:///var/lib/berth/berth.db"
STORE_URL_ENV = "BERTH_STORE"


def default_store_url() -> str:
    """``$BERTH_STORE`` when set, else the embedded SQLite file under ``/var/lib/berth``."""
    return os.environ.get(STORE_URL_ENV) or DEFAULT_STORE_URL
