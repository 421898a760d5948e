# hostmesh: `make demo` runs the narrated demo, `make test` runs every test.
# Both install what they need first (Debian packages, .venv with the package and its
# extras), idempotently: a second run with everything present takes a second.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := .stamps
# Real clients and servers the lab and the benchmarks drive.
APT_PACKAGES := nftables iptables iproute2 iperf3 sockperf haproxy curl openssl kcat \
                hey wrk tcpdump procps psmisc socat nginx-light python3-venv iputils-ping prometheus
PYTEST_ARGS ?=

.PHONY: setup apt venv dataplane demo test unit lab lint rust rust-build bench bench-quick clean
# The native data plane (dataplane/, Rust): cargo and rustc come from the distribution
# or rustup (docs/dataplane.md "Building"); maturin comes from PyPI with the venv.
CARGO ?= cargo
# cargo test links the crate against libpython (pyo3 without extension-module): the
# venv's interpreter says where it is.
PYO3_PYTHON = $(abspath $(PY))

setup: apt venv dataplane

apt: $(STAMP)/apt
$(STAMP)/apt: Makefile
	@mkdir -p $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

venv: $(STAMP)/venv
$(STAMP)/venv: pyproject.toml dataplane/Cargo.toml
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (Debian: apt-get install cargo rustc; or rustup), see docs/dataplane.md"; exit 1; }
	@mkdir -p $(STAMP)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench,lab,deploy]'
	@touch $@ $(STAMP)/dataplane  # the editable install just built the extension

demo: setup
	$(VENV)/bin/hostmesh demo

unit: setup
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

lab: setup
	$(PY) -m pytest tests/lab -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check agent tests

# The crate's own checks: formatting, lints as errors, unit and property tests. After
# a change under dataplane/src, `pip install -e .` (or `make rust-build`) rebuilds the
# extension the agent loads.
rust: setup
	cd dataplane && $(CARGO) fmt --check
	cd dataplane && PYO3_PYTHON=$(PYO3_PYTHON) $(CARGO) clippy --all-targets -q -- -D warnings
	cd dataplane && PYO3_PYTHON=$(PYO3_PYTHON) LD_LIBRARY_PATH=$$($(PYO3_PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))') $(CARGO) test -q

# The extension the agent loads, rebuilt when the crate changed (a warm release build
# takes seconds; a clean one ~1 minute on 2 cores).
dataplane: $(STAMP)/dataplane
$(STAMP)/dataplane: $(STAMP)/venv dataplane/Cargo.toml dataplane/Cargo.lock $(wildcard dataplane/src/*.rs)
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

rust-build:
	@rm -f $(STAMP)/dataplane
	@$(MAKE) --no-print-directory dataplane

# Every test: lint, unit (no root), lab (root, real namespaces), and the benchmark
# harness in --quick mode (proves it runs; targets are not asserted on shared CI).
test: setup rust
	$(VENV)/bin/ruff check agent tests
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/hostmesh bench --json bench-out/bench.json --plots docs/img

bench-quick: setup
	$(VENV)/bin/hostmesh bench --quick --json bench-out/bench-quick.json

clean:
	-$(VENV)/bin/hostmesh lab down --all 2>/dev/null
	rm -rf $(STAMP) build *.egg-info dataplane/target
