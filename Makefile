# The two commands of the README: `make demo` and `make test`. Both set up everything they
# need (Debian packages, the libvirt-qemu user, a virtualenv) and are fast when it is there.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
IMAGE := build/images/bootsector.raw
GUEST := build/images/reconciler-guest.raw

.PHONY: demo test lint setup image guest bench dist clean

demo: setup image
	@tools/write-demo-config.sh
	$(BIN)/reconcile --once manifests/ --image-dir build/images
	@echo
	@echo "Serial consoles of the running examples (markers: tools/guest/README.md):"
	@$(BIN)/python tools/show-consoles.py $${RECONCILER_STATE_DIR:-/var/lib/reconciler} demo- 120
	@echo
	@echo "demo-web is reachable through its port forward: http://127.0.0.1:18080/ answers"
	@$(BIN)/python tools/reach.py http://127.0.0.1:18080/ 60

test: setup image lint
	$(BIN)/pytest -q -n auto --maxprocesses 4 --dist loadgroup --no-loadscope-reorder tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

setup: $(STAMP)
	@tools/setup-host.sh

# pip's and setuptools' warnings ask nothing of the user: kept in .venv/pip.log, shown only
# when an install fails
$(STAMP): pyproject.toml tools/setup-host.sh
	@tools/setup-host.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing the Python packages into $(VENV) (a minute on a fresh host)"
	@$(BIN)/pip install -q --upgrade pip >$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@$(BIN)/pip install -q -e '.[dev]' >>$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@touch $(STAMP)

image: $(IMAGE) guest

$(IMAGE): tools/make-bootsector-image.py
	$(PYTHON) tools/make-bootsector-image.py $(IMAGE)

# The test guest from Debian packages (cached; the script itself skips unchanged inputs).
guest: setup
	$(BIN)/python tools/guest/build-guest-image.py build/images

# the wheel and the sdist, in dist/ (the commit they are built from recorded in them)
dist: setup
	$(BIN)/python tools/build-dist.py dist

bench: setup image
	$(BIN)/python bench/bench_cold_start.py

clean:
	rm -rf build $(VENV)
