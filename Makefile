# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-$(DEPS)
E2E_STAMP := $(VENV)/.installed-e2e-$(DEPS)
# The CPU wheel of torch lies on this machine's disk; install it first so that nothing pulls
# a multi-GB CUDA build. The package itself only asks for torch>=2.4.
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: setup test demo e2e benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -c constraints.txt -e ".[test,app,eval]"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The app's end-to-end browser test: Debian's Chromium (from apt, when missing) driven by
# Playwright (from PyPI; it never downloads a browser of its own).
CHROMIUM ?= /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(E2E_STAMP): $(STAMP)
	$(PIP) -c constraints.txt -e ".[test,app,eval,e2e]"
	touch $@

e2e: $(E2E_STAMP)
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }
	INBETWEENING_E2E=1 INBETWEENING_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q tests/e2e

# (an out/demo written before outputs carried their mark, or their kind, is this target's own:
# cleared once)
demo: $(STAMP)
	grep -qs '"kind": "output"' out/demo/.inbetweening-output.json || rm -rf out/demo
	$(BIN)/inbetween demo -o out/demo --overwrite

benchmark: $(STAMP)
	$(BIN)/python benchmarks/sampling.py --out benchmarks/results --threads 2
	$(BIN)/python benchmarks/training.py --out benchmarks/results

clean:
	rm -rf $(VENV) out .pytest_cache
