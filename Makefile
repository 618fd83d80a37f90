# One entry point for a fresh Debian 12 machine (as root) and for a developer's machine.
# Every target installs what it needs and is quick when everything is already there.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# libcurator-recipes-java: Curator's ServiceCache needs it, and Debian's libcurator-discovery-java forgets to depend on it
APT_PACKAGES := iproute2 nftables iptables etcd-server etcd-client podman runc busybox-static \
	containernetworking-plugins dnsperf dnsutils dnsmasq-base aardvark-dns tcpdump iperf3 \
	kmod procps psmisc gcc libc6-dev graphviz python3-consul curl util-linux passwd haproxy prometheus \
	zookeeper default-jdk-headless libcurator-discovery-java libcurator-recipes-java docker.io
PYTEST_ARGS ?=

.PHONY: all deps apt venv node-clients test test-pure demo demo-docker bench clean

all: test

deps: apt venv node-clients

# Installing etcd-server, zookeeper, prometheus, haproxy or docker.io must not start the system's own copies (on a
# systemd machine they would take ports 2379, 2181, 9090 and add docker0 and iptables rules): while apt runs, a
# policy-rc.d that refuses every service start (Debian's documented switch, honoured by invoke-rc.d and
# deb-systemd-invoke) is in place, and removed again however apt ends. Tests start private daemons of their own.
POLICY_RC := /usr/sbin/policy-rc.d

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ ! -e $(POLICY_RC) ]; then \
			trap 'rm -f $(POLICY_RC)' EXIT INT TERM; printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC); chmod 755 $(POLICY_RC); \
		fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

CNI_BIN := $(VENV)/cni-bin
# Launchers carry the build id (a digest of the files the CNI path runs, listed by cni_plugins/buildinfo.py):
# reinstall them whenever one of those, or the installer itself, changes — and only then.
CNI_SOURCES := $(shell $(PYTHON) -m cni_plugins.buildinfo --sources 2>/dev/null) berth/install_cni.py
$(CNI_BIN)/.installed: $(VENV)/.installed $(CNI_SOURCES)
	$(VENV)/bin/berth install-cni --dir $(CNI_BIN) --socket $(CURDIR)/$(VENV)/run/cni.sock >/dev/null
	@touch $@

# node-consul for the Consul-API tests (needs npm: a machine's own Node.js, e.g. NodeSource's, which conflicts with
# Debian's npm package, or Debian's nodejs + npm when there is none — `make apt` decides), pinned in tests/discovery/clients/package.json
# and its lock file, installed beside it
NODE_CLIENTS := tests/discovery/clients
$(NODE_CLIENTS)/node_modules/.installed: $(NODE_CLIENTS)/package.json
	cd $(NODE_CLIENTS) && npm install --no-audit --no-fund --silent
	@touch $@

node-clients: $(NODE_CLIENTS)/node_modules/.installed

venv: $(VENV)/.installed $(CNI_BIN)/.installed

# The plugin tests run twice: as above (each executable runs its plugin in process), then with a CNI daemon
# answering through the launchers (issue 7: both paths must give the same results).
DAEMON_PASS_TESTS := tests/ipam tests/bridge tests/portmap tests/podman
# ... less the modules that start private daemons of their own and so test both paths in the first pass already
OWN_DAEMON_TESTS := --ignore=tests/bridge/test_kill_race.py --ignore=tests/bridge/test_bad_input.py
# ... and cluster IPAM's: in process (no launcher to go through), or plugins exec'd inside host namespaces with the
# daemon off (a daemon in the test's own namespace could not reach the etcd those hosts see)
OWN_DAEMON_TESTS += $(foreach m,cluster_blocks cluster_store cluster_failover cluster_hosts ipam_check,\
	--ignore=tests/ipam/test_$(m).py)

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest --cni-daemon $(PYTEST_ARGS) $(OWN_DAEMON_TESTS) $(DAEMON_PASS_TESTS)

test-pure: venv
	$(PY) -m pytest -m "not root and not etcd and not podman and not slow and not service" $(PYTEST_ARGS)

demo: deps
	$(VENV)/bin/berth demo

demo-docker: deps
	$(VENV)/bin/berth demo --docker

bench: deps
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
