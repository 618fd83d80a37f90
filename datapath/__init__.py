"""The kernel datapath both container-network faces drive: netlink (:mod:`~datapath.rtnl`), network namespaces
(:mod:`~datapath.netns`), bridges, veth pairs and addresses (:mod:`~datapath.link_ops`, :mod:`~datapath.specs`),
firewall rules and their backends (:mod:`~datapath.firewall`), and host-port mapping rules with their lock
(:mod:`~datapath.ports`). Address type aliases are ipam's (:mod:`ipam.addresses`), the lowest room that needs them.

The CNI plugins (``cni_plugins``) and the Docker driver (``docker_plugin``) are two faces over this one room, so
they write the same links and rules and see each other's host ports. Errors are this room's own
(:mod:`~datapath.errors`); each face maps them once to its own replies (CNI codes, Docker's error answers).

Imports run one way: ``cni_plugins`` → ``datapath`` → ``ipam`` → ``store``, and ``docker_plugin`` → ``datapath``,
``ipam``, ``discovery``. ``datapath`` never imports ``cni_plugins`` or ``docker_plugin`` (tests/core/test_rooms.py
checks it). It is on the CNI cold path: the standard library and ipam's ``record`` and ``paths`` only at import
(pyroute2, ``hashlib`` and ``subprocess`` are imported where first needed).
"""
