# mnistlab: `make demo` sets everything up and trains the default recipe; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a GPU, PyTorch's CPU build: on this project's machines pip finds torch 2.13.0 (CPU) on
# local disk. Elsewhere, point pip at PyTorch's CPU wheels, for example:
#   make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup demo test bench-keras clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing PyTorch with CUDA"; \
		$(PY) -m pip install -q "torch>=2.4"; \
	else \
		echo "no GPU: installing the CPU build of PyTorch ($(TORCH))"; \
		$(PY) -m pip install -q "$(TORCH)" $(TORCH_PIP_ARGS); \
	fi
	$(PY) -m pip install -q -e ".[test,tensorboard]"
	touch $@

demo: setup
	$(VENV)/bin/mnistlab train

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
