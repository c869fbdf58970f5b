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

.PHONY: setup test test-slow demo e2e comfyui-e2e chromium benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -c constraints.txt -e ".[test,app,eval]"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The slow tier (several processes, the SVD-XT-sized UNet, long toy videos): CI runs it too.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The app's end-to-end browser test: Debian's Chromium (from apt, when missing) driven by
# Playwright (from PyPI; it never downloads a browser of its own).
CHROMIUM ?= /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(E2E_STAMP): $(STAMP)
	$(PIP) -c constraints.txt -e ".[test,app,eval,e2e]"
	touch $@

chromium:
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

e2e: $(E2E_STAMP) chromium
	INBETWEENING_E2E=1 INBETWEENING_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q tests/e2e

# The node pack in a real ComfyUI (the fixture's snapshot, GPL: unpacked under build/, never
# committed), in a lean environment of its own: the CPU torch first, then ComfyUI's requirements
# less those that would pull a CUDA torch or that the server runs without (the upscale, canny,
# morphology and audio nodes then fail to import, harmlessly), then this package. No CPU build of
# torchvision is on the registries: PyPI's, pinned to this torch and without its dependencies,
# imports with tests/e2e/torchvision_without_ops.py (see there).
COMFYUI_FIXTURE ?= ../shared/fixtures/comfyui-618b803.tar.gz
TORCHVISION ?= torchvision==0.28.0
COMFYUI_HOME := build/comfyui
COMFYUI_VENV := $(COMFYUI_HOME)/venv
COMFYUI_SKIP := torch|torchvision|torchaudio|spandrel|kornia|comfy-kitchen
COMFYUI_SKIP := $(COMFYUI_SKIP)|comfyui-workflow-templates|comfyui-embedded-docs
COMFYUI_PIP  := $(COMFYUI_VENV)/bin/python -m pip install -q --disable-pip-version-check
COMFYUI_STAMP := $(COMFYUI_VENV)/.installed-$(DEPS)

$(COMFYUI_HOME)/ComfyUI/main.py: $(COMFYUI_FIXTURE)
	rm -rf $(COMFYUI_HOME)/ComfyUI
	mkdir -p $(COMFYUI_HOME)
	tar -xzf $(COMFYUI_FIXTURE) -C $(COMFYUI_HOME)
	touch $@

$(COMFYUI_STAMP): $(COMFYUI_HOME)/ComfyUI/main.py pyproject.toml constraints.txt \
		tests/e2e/torchvision_without_ops.py
	test -x $(COMFYUI_VENV)/bin/python || $(PYTHON) -m venv $(COMFYUI_VENV)
	$(COMFYUI_PIP) "$(TORCH)"
	$(COMFYUI_PIP) --no-deps "$(TORCHVISION)"
	grep -v -i -E '^($(COMFYUI_SKIP))([^a-z0-9_-]|$$)' $(COMFYUI_HOME)/ComfyUI/requirements.txt \
		> $(COMFYUI_HOME)/requirements.txt
	$(COMFYUI_PIP) -c constraints.txt -r $(COMFYUI_HOME)/requirements.txt requests -e .
	site=$$($(COMFYUI_VENV)/bin/python -c \
		"import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
		cp tests/e2e/torchvision_without_ops.py "$$site/" && \
		echo "import torchvision_without_ops" > "$$site/torchvision_without_ops.pth"
	rm -f $(COMFYUI_VENV)/.installed-*
	touch $@

# (one thread each: ComfyUI and the CLI then compute alike, and a busy machine does not make
# their threads wait on each other)
comfyui-e2e: $(E2E_STAMP) $(COMFYUI_STAMP) chromium
	OMP_NUM_THREADS=1 INBETWEENING_COMFYUI_E2E=1 \
		INBETWEENING_COMFYUI_DIR=$(abspath $(COMFYUI_HOME)/ComfyUI) \
		INBETWEENING_COMFYUI_PYTHON=$(abspath $(COMFYUI_VENV)/bin/python) \
		INBETWEENING_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q tests/e2e/test_comfyui.py

# (an out/demo written before outputs carried their mark, or their kind, is this target's own:
# cleared once)
demo: $(STAMP)
	grep -qs '"kind": "output"' out/demo/.inbetweening-output.json || rm -rf out/demo
	$(BIN)/inbetween demo -o out/demo --overwrite

benchmark: $(STAMP)
	$(BIN)/python benchmarks/sampling.py --out benchmarks/results --threads 2
	$(BIN)/python benchmarks/training.py --out benchmarks/results

clean:
	rm -rf $(VENV) out .pytest_cache $(COMFYUI_HOME)
