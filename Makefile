# One entry point for a fresh Debian 12 machine (as root) and for a developer's machine.
# Every target installs what it needs and is quick when everything is already there.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := iproute2 nftables iptables etcd-server etcd-client podman runc busybox-static \
	containernetworking-plugins dnsperf dnsutils dnsmasq-base aardvark-dns tcpdump iperf3 \
	kmod procps psmisc gcc libc6-dev graphviz zookeeper
PYTEST_ARGS ?=

.PHONY: all deps apt venv test test-pure demo bench clean

all: test

deps: apt venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

CNI_BIN := $(VENV)/cni-bin
# Launchers carry the build id (a digest of the sources): reinstall them whenever a source changes.
BERTH_SOURCES := $(shell find cni_plugins ipam store discovery overlay berth -name '*.py' -o -name '*.c' 2>/dev/null)
$(CNI_BIN)/.installed: $(VENV)/.installed $(BERTH_SOURCES)
	$(VENV)/bin/berth install-cni --dir $(CNI_BIN) --socket $(CURDIR)/$(VENV)/run/cni.sock >/dev/null
	@touch $@

venv: $(VENV)/.installed $(CNI_BIN)/.installed

# The plugin tests run twice: as above (each executable runs its plugin in process), then with a CNI daemon
# answering through the launchers (issue 7: both paths must give the same results).
DAEMON_PASS_TESTS := tests/ipam tests/bridge tests/portmap tests/podman

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest --cni-daemon $(PYTEST_ARGS) $(DAEMON_PASS_TESTS)

test-pure: venv
	$(PY) -m pytest -m "not root and not etcd and not podman and not slow and not service" $(PYTEST_ARGS)

demo: deps
	$(VENV)/bin/berth demo

bench: deps
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
