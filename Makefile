# Two commands do everything on a fresh machine:
#   make demo   set up, start 3 bare hosts, converge them from a Git commit, show the records
#   make test   set up, install and start what the tests need, run the whole suite
SHELL := /bin/bash
PYTHON ?= $(shell scripts/python.sh)
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := git openssh-server openssh-client debootstrap iproute2 openssl systemd systemd-container postgresql \
                util-linux procps ca-certificates qemu-system-x86 qemu-utils libvirt-clients \
                libvirt-daemon-system libvirt-daemon-system-sysv libvirt-dev pkg-config gcc chromium
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (0: no workers, everything in one process)
PYTEST_WORKERS ?= 3
LAB_CACHE = $(or $(GITOPS_LAB_CACHE),/var/cache/gitops-ansible-lab)
COMPAT_PYTHON ?= $(shell scripts/python.sh 3.11 2>/dev/null)

.PHONY: all demo demo-down test test-unit test-compat system venv collections clean lab-assets
all: test

system:  ## Debian packages the lab and the tests need (installed only when missing)
	@# installed means "install ok installed": a package removed but not purged is missing
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
	  | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The Kubernetes and VM platforms: the kubernetes client, libvirt-python and lxml, and the
# kubernetes.core and community.libvirt collections, taken from the `ansible` wheel on PyPI
# (Galaxy is not needed, nor reachable here).
$(VENV)/.collections: $(VENV)/.installed scripts/kube_collection.py
	$(PY) -m pip install -q -e '.[kubernetes,vm]'
	$(PY) scripts/kube_collection.py
	touch $@

# The tests' collections (tests/integration/test_requirements.py): the `ansible` wheel kept in
# the lab cache, the collections they install taken from it (lab/collections.py) and the
# virtualenv of the Galaxy server that serves them (lab/galaxy.py: Pulp, ~1 min once). Cached.
collections: $(VENV)/.collections
	$(PY) scripts/kube_collection.py --cache-dir $(LAB_CACHE)/wheels
	$(PY) -m lab.collections
	$(PY) -m lab.galaxy build

# The Kubernetes binaries (5-37 min on a fresh machine), then helm (~5.5 min), and the guest
# image (2-7 min) build in the background from the start of `make test` while the tests that
# need none of them run; their fixtures wait for the build through its lock (lab/kube.py,
# lab/cache.py). Cached: a no-op.
lab-assets: system venv
	@mkdir -p $(LAB_CACHE)
	@echo "lab assets: built in the background where not cached (log $(LAB_CACHE)/assets.log)"
	@($(PY) -m lab.kube build & $(PY) -m lab.guest build & wait) >$(LAB_CACHE)/assets.log 2>&1 &

# Independent modules in parallel, each module on one worker (--dist loadfile; the order is
# tests/conftest.py's, longest first), every worker with a lab of its own (lab/fixtures.py).
# The 30 slowest tests are listed at the end, so that the suite's growth shows.
test: system venv lab-assets collections  ## the whole suite (root: bare hosts in namespaces; CI=true fails on what is missing)
	$(PY) -m pytest -ra -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  --durations=30 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-compat

test-unit: venv  ## the quick tier: no hosts, no Git servers
	$(PY) -m pytest -q tests/unit

# Python 3.11 with ansible-core 2.19: the oldest supported combination, quick tier plus
# one real pull cycle and the causes of failures as Ansible prints them. The project's
# playbooks name kubernetes.core and community.libvirt modules: Ansible (and the
# validation) needs those collections even where no target of those platforms runs.
# Skipped (with a message) where no Python 3.11 exists, except in CI.
test-compat:
	@if [ -z "$(COMPAT_PYTHON)" ]; then \
	  if [ "$$CI" = true ]; then echo "CI=true: Python 3.11 is missing for test-compat"; exit 1; fi; \
	  echo "test-compat: no Python 3.11 here, skipped"; exit 0; fi; \
	test -x .venv-compat/bin/python || $(COMPAT_PYTHON) -m venv .venv-compat; \
	.venv-compat/bin/pip install -q -e . pytest prometheus_client==0.26.0 'ansible-core>=2.19,<2.20' && \
	.venv-compat/bin/python scripts/kube_collection.py --cache-dir $(LAB_CACHE)/wheels >/dev/null && \
	.venv-compat/bin/python -c 'import ansible, sys; print("compat: Python", sys.version.split()[0], "ansible-core", ansible.__version__)' && \
	.venv-compat/bin/python -m pytest -q tests/unit \
	  "tests/integration/test_pull.py::test_run_converges_then_nothing_to_do_then_new_commit" \
	  tests/integration/test_causes.py

vm-assets: system venv  ## build the cached guest image for the vm tests (once per machine, 5-7 min)
	$(PY) -m lab.guest build

demo: system venv $(VENV)/.collections  ## converge the built-in example (inventories/local) on 3 bare hosts
	$(PY) -m lab.demo

demo-down:  ## stop the demo hosts
	$(PY) -m lab down --dir /var/tmp/gitops-ansible-demo

clean:
	rm -rf $(VENV) .venv-compat *.egg-info

.PHONY: kube-assets
kube-assets: venv  ## build the cached Kubernetes binaries and helm for the tests (once per machine, ~20-37 min)
	$(PY) -m lab.kube build
