# Quick start: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUNS   ?= runs

.PHONY: setup test lint demo realdata-bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# CPU torch first where no CUDA is present (an unpinned torch pulls a multi-GB CUDA build)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	# the embedded LLM's extra: llama-cpp-python builds from source (~6 min once; pip caches the wheel)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q -e ".[dev,local]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

demo: setup
	$(BIN)/autoscope run --scenario plasmonic --out $(RUNS)/demo-$$(date +%Y%m%d-%H%M%S)

# The README's table of discovery on the shared real recordings (../shared/realdata): ~35 min
REALDATA := SiO2_EDS_SI core_shell_EDS_SI MAPbI3_EELS_SI Si_EDS_SI_velox
realdata-bench: setup
	mkdir -p $(RUNS)/realdata
	for n in $(REALDATA); do \
	  $(BIN)/autoscope bench discovery --replay evals/realdata/$$n.replay.yaml \
	    --campaign evals/realdata/$$n.campaign.yaml --seeds 5 --budget 400 \
	    --keep $(RUNS)/realdata/$$n --figure $(RUNS)/realdata/$$n-discovery.png --json \
	    > $(RUNS)/realdata/$$n.json || exit $$?; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
