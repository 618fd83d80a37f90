# One entry point for a fresh Debian 12 machine (as root) and for a developer's machine.
# Every target installs what it needs and is quick when everything is already there.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := iproute2 nftables iptables etcd-server etcd-client podman runc busybox-static \
	containernetworking-plugins dnsperf dnsutils dnsmasq-base aardvark-dns tcpdump iperf3 \
	kmod procps psmisc gcc libc6-dev
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
$(CNI_BIN)/.installed: $(VENV)/.installed cni_plugins/launcher.py cni_plugins/invoke.py berth/install_cni.py
	$(VENV)/bin/berth install-cni --dir $(CNI_BIN) >/dev/null
	@touch $@

venv: $(VENV)/.installed $(CNI_BIN)/.installed

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-pure: venv
	$(PY) -m pytest -m "not root" $(PYTEST_ARGS)

demo: deps
	$(VENV)/bin/berth demo

bench: deps
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
