"""``berth overlay``: the host daemon that ties the lease, the VXLAN device and the peers' kernel entries together.

Start-up order matters. The daemon lists the leases, creates the device (its MAC from this host's earlier lease or
subnet file) and programs every peer from that listing (which also sweeps entries of hosts that left while it was
down) *before* it claims or renews its own lease: peers install a host the moment its lease appears, so it must
already be able to answer (flannel announces first and programs after). Then the device gets its address, the
masquerade rules go in, and only then is the subnet file written, so a plugin never hands out addresses from a subnet
this host does not hold. After that two loops run apart, both the store room's shared ones: the
:class:`store.follower.Follower` of the leases (from the listing's revision; resumed, re-listed after compaction or
a failure) and the :class:`store.keeper.LeaseKeeper` of this host's store lease, which calls back to put the
subnet key under a new store lease when the old one was lost.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace

from overlay import claim, kernel, masq, metrics, subnetfile
from overlay.blocks import IPAM_NETWORKS_PREFIX, BlockView, block_state, gateways_for_borrowed, needs_ipv6
from overlay.config import DEFAULT_PREFIX, NetworkConfig
from overlay.lease import subnets_prefix
from overlay.reconcile import Delta, LeaseWatcher, desired_state, plan
from store.api import KeyValue, LeaseNotFound, StoreError, WatchBatch
from store.follower import Follower
from store.keeper import LeaseKeeper

log = logging.getLogger("berth.overlay")


@dataclass(frozen=True)
class DaemonOptions:
    store_url: str
    iface: str
    public_ip: str | None = None
    prefix: str = DEFAULT_PREFIX
    subnet_file: str = subnetfile.DEFAULT_SUBNET_FILE
    device: str | None = None  # default: berth.<VNI>
    lease_ttl: float = 30.0
    ip_masq: bool = True
    release_on_exit: bool = False
    config_wait: float = 60.0  # how long to wait for `berth overlay init` before giving up
    resync_interval: float = 30.0  # re-read the kernel this often and repair drift (0: never)
    ipam_host: str = ""  # this host's cluster IPAM name (ipam config "host"); "": the machine's hostname
    route_blocks: bool = True  # route cluster IPAM blocks of peers (overlay.blocks)
    ipam_host_ttl: float = 3600.0  # keep cluster IPAM's liveness key of this host alive (overlay.ipam_host; 0: no)
    ipam_reclaim_interval: float = 30.0  # mark departed IPAM hosts, free what their grace allows (ipam.reclaim; 0: no)


class DaemonError(RuntimeError):
    pass


@dataclass(frozen=True)
class PeerChange:
    """One step of the follower: the peers' delta, and whether it came from a listing (then the kernel is read
    again rather than trusting the record of what was programmed)."""

    delta: Delta
    relisted: bool


@dataclass
class PeersReducer:
    """The follower's reducer: listings and batches into the pure :class:`LeaseWatcher`."""

    watcher: LeaseWatcher

    def reset(self, items: list[KeyValue], revision: int) -> PeerChange:
        return PeerChange(self.watcher.reset((kv.key, kv.value) for kv in items), relisted=True)

    def apply(self, batch: WatchBatch) -> PeerChange:
        return PeerChange(self.watcher.apply(batch.events), relisted=batch.resynced)


class OverlayDaemon:
    def __init__(self, options: DaemonOptions, store=None) -> None:
        self.options = options
        self.store = store
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._recover_lock = threading.Lock()
        self._follower: Follower | None = None
        self._follower_ipr = None  # the follower thread's own netlink socket (opened on its first step)
        self._keeper: LeaseKeeper | None = None
        self._programmed = None  # the kernel entries as last programmed (None: read the kernel)
        self._lock = threading.Lock()  # one reconciliation at a time: the watch's or the periodic repair's
        self.ipam_host = options.ipam_host or socket.gethostname()
        self._blocks = None  # overlay.blocks.BlockSnapshot once listed (None: route no blocks)
        self._block_follower: Follower | None = None
        self._block_ipr = None
        self._ipam_host_keeper = None
        self._ipv6_enabled = False  # the VXLAN device carries IPv6 (checked again whenever the kernel is re-read)

    # -- start-up -------------------------------------------------------------------------------------------

    def start(self) -> None:
        from pyroute2 import IPRoute
        from store.api import open_store

        opts = self.options
        started = time.monotonic()
        if self.store is None:
            self.store = open_store(opts.store_url)
        self.config = self._wait_for_config()
        with IPRoute() as ipr:
            self.underlay = kernel.underlay(ipr, opts.iface, opts.public_ip)
            self.device = opts.device or f"berth.{self.config.vni}"
            public_ip = self.underlay.address.ip
            previous = subnetfile.read_if_present(opts.subnet_file)
            preferred = None
            if previous is not None and previous.subnet.network.subnet_of(self.config.network):
                preferred = previous.subnet.network
            leases, revision = claim.list_leases(self.store, opts.prefix)
            own = claim.find_own(leases, public_ip)
            mac = (own[1].vtep_mac if own else "") or (previous.vtep_mac if previous else "") \
                or kernel.existing_mac(ipr, self.device) or kernel.random_mac()
            # ready to carry traffic before announcing: device and peers first, so that peers which install this
            # host the moment its lease appears get answers at once
            self.mtu = kernel.vxlan_mtu(self.underlay.mtu, self.config.mtu)
            spec = kernel.VxlanSpec(self.device, self.config.vni, self.config.port, public_ip, self.underlay.index,
                                    mac, self.mtu, None)
            self.vxlan_index = kernel.ensure_vxlan(ipr, spec)
            self._devices = {self.device: self.vxlan_index, self.underlay.name: self.underlay.index}
            kernel.enable_forwarding()
            if opts.route_blocks:  # listed before the first reconciliation, so a restart keeps block routes
                self._block_follower = Follower(self.store, IPAM_NETWORKS_PREFIX, BlockView(), self._on_blocks,
                                                name="berth-overlay-blocks")
                self._block_follower.list_now()
            self.watcher = LeaseWatcher(None, public_ip, opts.prefix)
            self._reconcile(ipr, self.watcher.reset((kv.key, kv.value) for kv, _lease in leases), "start")
            log.debug("t+%.1f ms: device and %d peers programmed", _ms(started), len(self.watcher.leases))

            self.held = claim.acquire(self.store, opts.prefix, self.config, public_ip, mac, opts.lease_ttl,
                                      preferred=preferred, ipam_host=self.ipam_host)
            lease = self.held.lease
            log.info("lease %s for %s (VTEP MAC %s, %s) written at %.6f", lease.subnet, public_ip, lease.vtep_mac,
                     "reserved" if not self.held.store_lease else f"store lease {self.held.store_lease:x}",
                     self.held.written_at)
            self.watcher.own_subnet = lease.subnet
            if lease.vtep_mac != mac:  # cannot happen unless the record changed between listing and claim
                spec = replace(spec, mac=lease.vtep_mac)
            kernel.ensure_vxlan(ipr, replace(spec, vtep_ip=lease.vtep_ip))
        self._follower = Follower(self.store, subnets_prefix(opts.prefix), PeersReducer(self.watcher),
                                  self._on_peers, name="berth-overlay-watch").start(revision)
        if self._block_follower is not None:
            self._block_follower.start()
        while not self._follower.following.wait(0.2):
            if self.failed is not None or self.stopping.is_set():
                raise DaemonError(f"the watch did not start: {self.failed}")
        self.ready.set()
        if opts.ip_masq:  # before the subnet file: no container can start before its traffic is masqueraded
            masq.apply(self.config.network, lease.subnet)
        log.debug("t+%.1f ms: masquerade rules", _ms(started))
        subnetfile.write(opts.subnet_file, subnetfile.for_lease(
            self.config.network, lease.subnet, self.mtu, opts.ip_masq, lease.vtep_mac))
        if opts.resync_interval > 0:
            threading.Thread(target=self._repair_loop, name="berth-overlay-repair", daemon=True).start()
        if self.held.store_lease:
            self._keeper = LeaseKeeper(self.store, self.held.ttl, self._rewrite_lease, name="berth-overlay-lease")
            if self._keeper.acquire(reuse=self.held.store_lease) != self.held.store_lease:
                self._rewrite_lease(self._keeper.lease_id)  # expired in the moments since the claim
            self._keeper.start()
        if opts.ipam_host_ttl > 0:
            from overlay.ipam_host import IpamHostKeeper
            self._ipam_host_keeper = IpamHostKeeper(self.store, self.ipam_host, opts.ipam_host_ttl).start()
        if opts.ipam_reclaim_interval > 0:
            threading.Thread(target=self._reclaim_loop, name="berth-overlay-ipam-reclaim", daemon=True).start()
        log.info("ready: subnet %s on %s, %d peers", lease.subnet, self.device, len(self.watcher.leases))

    def _wait_for_config(self) -> NetworkConfig:
        deadline = time.monotonic() + self.options.config_wait
        while True:
            try:
                return claim.load_config(self.store, self.options.prefix)
            except claim.ClaimError:
                if time.monotonic() > deadline or self.stopping.is_set():
                    raise
                log.info("waiting for the network config (berth overlay init)")
                self.stopping.wait(1.0)

    # -- the watch ----------------------------------------------------------------------------------------------

    def _on_peers(self, change: PeerChange) -> None:
        """One step of the follower (its thread). A failure here makes the follower re-list after a pause, and a
        re-listing compares with the kernel itself."""
        if self._follower_ipr is None:
            from pyroute2 import IPRoute
            self._follower_ipr = IPRoute()
        with self._lock:
            if change.relisted:
                log.info("watch re-listed at revision %d", self._follower.revision if self._follower else 0)
                self._programmed = None
            self._reconcile(self._follower_ipr, change.delta, "watch")

    def _on_blocks(self, snapshot) -> None:
        """The block follower's step: new block owners or borrowed addresses (None: nothing routing needs)."""
        if snapshot is None:
            return
        if not hasattr(self, "watcher"):  # the listing at start-up: the first reconciliation uses it
            self._blocks = snapshot
            return
        if self._block_ipr is None:
            from pyroute2 import IPRoute
            self._block_ipr = IPRoute()
        with self._lock:
            self._blocks = snapshot
            self._reconcile(self._block_ipr, Delta(), "blocks")

    def _reconcile(self, ipr, delta: Delta, trigger: str) -> None:
        with metrics.reconciling(trigger):
            self._reconcile_now(ipr, delta, trigger)

    def _reconcile_now(self, ipr, delta: Delta, trigger: str) -> None:
        if delta.own_lost and self.watcher.own_subnet is not None and self.held.store_lease:
            log.warning("this host's lease key disappeared")
            threading.Thread(target=self._restore_own_key, name="berth-overlay-restore", daemon=True).start()
        use_direct = self.config.direct_routing
        desired = desired_state(self.watcher.leases.values(), self.device, self.underlay.name,
                                self.underlay.networks if use_direct else ())
        if self._blocks is not None:
            bridges = kernel.devices_holding(ipr, gateways_for_borrowed(self._blocks, self.ipam_host))
            blocks = block_state(self._blocks, self.watcher.leases.values(), self.ipam_host, self.device,
                                 self.underlay.name, self.underlay.networks if use_direct else (), bridges)
            desired = replace(desired, routes=desired.routes | blocks.routes,
                              neighbours=desired.neighbours | blocks.neighbours, fdb=desired.fdb | blocks.fdb)
            if needs_ipv6(self._blocks) and (self._programmed is None or not self._ipv6_enabled):
                kernel.enable_ipv6(ipr, self.device, self.vxlan_index, kernel.existing_mac(ipr, self.device))
                self._ipv6_enabled = True
        # the kernel is read after a listing (that read also finds entries of hosts gone while this daemon was
        # down); between listings the daemon's own record of what it programmed is enough, and cheaper
        actual = self._programmed if self._programmed is not None else kernel.read_state(ipr, self.vxlan_index)
        changes = plan(desired, actual)
        self._programmed = None  # unknown until the changes are made: a failure re-reads the kernel
        if not changes.empty():
            if trigger == "blocks":
                log.info("cluster IPAM blocks moved: %s", changes)
            elif not delta.added and not delta.removed:
                log.info("repairing kernel entries: %s", changes)
            kernel.apply_plan(ipr, changes, self.vxlan_index, self._devices)
        self._programmed = desired
        metrics.programmed(len(self.watcher.leases), desired)
        for lease in delta.added:
            log.info("peer %s at %s (MAC %s) installed", lease.subnet, lease.public_ip, lease.vtep_mac)
        for lease in delta.removed:
            log.info("peer %s at %s removed", lease.subnet, lease.public_ip)

    def _repair_loop(self) -> None:
        """Every ``resync_interval``, compare with the kernel itself: an entry someone deleted comes back, one
        someone added on the VXLAN device goes (between listings the watch only diffs against its own record)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            while not self.stopping.wait(self.options.resync_interval):
                try:
                    with self._lock:
                        self._programmed = None
                        self._reconcile(ipr, Delta(), "repair")
                except Exception:
                    log.exception("periodic kernel check failed")

    def _reclaim_loop(self) -> None:
        """Every ``ipam_reclaim_interval``, one cluster IPAM reclaim pass (ipam.reclaim) on the one host whose turn
        it is (ipam.reclaim.my_turn); each free is a compare-and-swap, so even passes on two hosts at once (one
        lease ending as another takes over) free an address once."""
        from discovery.ipam_liveness import read_liveness
        from ipam.reclaim import my_turn, reclaim_pass

        while not self.stopping.wait(self.options.ipam_reclaim_interval):
            keeper = self._ipam_host_keeper
            try:
                if not my_turn(self.store, self.ipam_host, keeper.keeper.lease_id if keeper is not None else 0):
                    continue
                freed, blocks = reclaim_pass(self.store, read_liveness)
            except Exception:
                metrics.IPAM_RECLAIM_ERRORS.inc()
                log.exception("cluster IPAM reclaim pass failed")
                continue
            metrics.IPAM_RECLAIMED.inc(len(freed))
            for leak in freed:
                log.warning("freed %s of departed host %s (%s/%s, network %s): its grace period had passed",
                            leak.held.address, leak.held.record.host, leak.held.record.container_id,
                            leak.held.record.ifname, leak.held.network)
            for usage in blocks:
                log.info("released block %s of departed host %s (network %s)", usage.block, usage.owner,
                         usage.network)

    # -- the lease ----------------------------------------------------------------------------------------------

    def _rewrite_lease(self, lease_id: int) -> None:
        """The keeper's callback: put this host's subnet key under ``lease_id``. A store error propagates (the
        keeper calls again after a pause); if another host took the subnet meanwhile, stop (the supervisor
        restarts the daemon, which claims a new subnet and rewrites the subnet file)."""
        with self._recover_lock:
            try:
                self.held = claim.reclaim(self.store, self.options.prefix, self.held, lease_id)
            except claim.ClaimError as exc:
                log.error("lost subnet %s: %s", self.held.lease.subnet, exc)
                self.failed = exc
                _remove_quietly(self.options.subnet_file)
                self.stopping.set()
                if self._keeper is not None:
                    self._keeper.stop()
                return
            metrics.LEASE_REWRITES.inc()
            log.info("lease %s restored under store lease %x", self.held.lease.subnet, lease_id)

    def _restore_own_key(self) -> None:
        """The watch saw this host's key deleted: write it again under the current store lease, or have the
        keeper replace that lease if the store says it is gone."""
        keeper = self._keeper
        if keeper is None or not keeper.lease_id:
            return
        lease_id = keeper.lease_id
        try:
            self._rewrite_lease(lease_id)
        except LeaseNotFound:
            keeper.lost(lease_id)
        except StoreError as exc:
            log.warning("restoring this host's key failed (%s); the keeper will retry", exc)
            keeper.lost(lease_id)

    # -- shutdown -------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the loops. Kernel state and the lease stay (a restart finds them and peers notice nothing)
        unless ``release_on_exit``: then the subnet is given back and this host's device and rules removed."""
        self.stopping.set()
        if self._keeper is not None:
            self._keeper.stop()
        if self._follower is not None:
            self._follower.stop()
        if self._follower_ipr is not None:
            self._follower_ipr.close()
        if self._ipam_host_keeper is not None:
            self._ipam_host_keeper.stop()
        if self._block_follower is not None:
            self._block_follower.stop()
        if self._block_ipr is not None:
            self._block_ipr.close()
        if self.options.release_on_exit and getattr(self, "held", None) is not None:
            claim.release(self.store, self.options.prefix, self.held)
            _remove_quietly(self.options.subnet_file)
            self._remove_kernel_state()
        if self.store is not None:
            try:
                self.store.close()
            except Exception:
                pass

    def _remove_kernel_state(self) -> None:
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                kernel.apply_plan(ipr, plan(kernel.KernelState(), kernel.read_state(ipr, self.vxlan_index)),
                                  self.vxlan_index)
                found = ipr.link_lookup(ifname=self.device)
                if found:
                    ipr.link("del", index=found[0])
            if self.options.ip_masq:
                masq.remove()
        except Exception as exc:
            log.warning("cleaning up kernel state: %s", exc)


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

