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

.PHONY: setup apt venv demo test unit lab lint bench bench-quick clean

setup: apt venv

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
$(STAMP)/venv: pyproject.toml
	@mkdir -p $(STAMP)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench,lab,deploy]'
	@touch $@

demo: setup
	$(VENV)/bin/hostmesh demo

unit: setup
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

lab: setup
	$(PY) -m pytest tests/lab -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check agent tests

# Every test: lint, unit (no root), lab (root, real namespaces), and the benchmark
# harness in --quick mode (proves it runs; targets are not asserted on shared CI).
test: setup
	$(VENV)/bin/ruff check agent tests
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/hostmesh bench --json bench-out/bench.json --plots docs/img

bench-quick: setup
	$(VENV)/bin/hostmesh bench --quick --json bench-out/bench-quick.json

clean:
	-$(VENV)/bin/hostmesh lab down --all 2>/dev/null
	rm -rf $(STAMP) build *.egg-info
