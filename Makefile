# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# The CPU wheel of torch lies on this machine's disk; install it first so that nothing pulls
# a multi-GB CUDA build. The package itself only asks for torch>=2.4.
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: setup test demo e2e benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -c constraints.txt -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/inbetween demo -o out/demo --overwrite

benchmark: $(STAMP)
	$(BIN)/python benchmarks/sampling.py --out benchmarks/results

clean:
	rm -rf $(VENV) out .pytest_cache
