"""dnsd: Berth's DNS server — authoritative for the discovery view's names, a forwarder for everything else.

Layers, inner to outer: ``names`` (pure name scheme: records → zone index → answers) kept current by
``zonebuild`` (one changed endpoint at a time), ``chain`` (zone → recursion gate (``acl``, ``managed``) → upstream
cache → forward), ``scan`` (the bounded first look at a request and its normalised cache key), ``responder``
(sans-IO: bytes in, bytes or a Forward out, with the bounded packed-answer cache of ``packed``),
``server``/``udp_batch``/``tcp`` (sockets only), ``cli`` (``berth dns``).

For containers, run it on the bridge gateway so their resolv.conf can point at it (the bridge's ``dns`` block:
nameservers = the gateway, search = the zone)::

    berth dns --store sqlite:///var/lib/berth/berth.db --listen 10.88.0.1:53 --workers 2

Clients on loopback, the gateway's network, the overlay's subnets (from the store) and ``--allow`` ranges may
recurse; others get REFUSED. Registered endpoints gain nothing: who may recurse is configuration (``acl``).
"""
