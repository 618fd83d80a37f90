"""Drives python-consul 0.7.1 (Debian's python3-consul) against a berth agent; one JSON line per answer.

Run with the system interpreter, where Debian installs it:
    /usr/bin/python3 python_consul_client.py PORT TOKEN|- '{"calls": [["catalog.services", {...}], ...]}'
    /usr/bin/python3 python_consul_client.py PORT TOKEN|- '{"until_file": PATH, "calls": [...]}'
"""
import json
import os
import sys

import consul

port, token, spec = sys.argv[1:4]
client = consul.Consul(host="127.0.0.1", port=int(port), token=None if token == "-" else token)
job = json.loads(spec)
assert consul.__file__.startswith("/usr/lib/python3/dist-packages/"), consul.__file__


def call(name, args):
    target = client
    for part in name.split("."):
        target = getattr(target, part)
    posargs = args.pop("_args", [])
    try:
        result = target(*posargs, **args)
    except consul.ConsulException as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(result, tuple):
        return {"index": result[0], "data": result[1]}
    return {"index": None, "data": result}


while True:
    for name, args in job["calls"]:
        print(json.dumps(call(name, dict(args))), flush=True)
    if not job.get("until_file") or os.path.exists(job["until_file"]):
        break
