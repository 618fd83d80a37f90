"""A minimal plugin for testing the launcher and daemon mechanics without root: its ADD result names the process
that ran it (``dns.options = ["pid:<n>"]``), and it can be held mid-call until a file appears."""
import hashlib
import ipaddress
import os
import time

from cni_plugins import errors, skel, types


def _hold(req):
    gate = req.env.get("BT_HOLD_UNTIL")
    if gate:
        started = req.env.get("BT_STARTED_FILE")
        if started:
            open(started, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)


def add(req):
    _hold(req)
    if req.args.get("K8S_POD_NAME") == "fail":
        raise errors.TryAgainLater("asked to fail")
    host = int(hashlib.sha256(req.container_id.encode()).hexdigest(), 16) % 250 + 2
    return types.Result(req.cni_version, ips=[types.IPConfig(ipaddress.ip_interface(f"10.88.0.{host}/24"))],
                        dns=types.DNS(options=(f"pid:{os.getpid()}",)))


def delete(req):
    _hold(req)


HANDLERS = skel.Handlers(add=add, delete=delete)
