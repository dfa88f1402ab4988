# napari-segsuite: `make demo` and `make test` do the whole set-up on a fresh Debian machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.segsuite-installed
DEMO_OUT ?= demo-output

.PHONY: setup demo lint test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

# With a display: napari opens with the sample and the widgets. Without one: the same flow runs
# headless under Xvfb and writes the labels and a screenshot to $(DEMO_OUT)/.
demo: setup
	@if [ -n "$$DISPLAY" ]; then \
		$(VENV)/bin/segsuite demo; \
	else \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/segsuite demo --headless --out $(DEMO_OUT) --overwrite; \
	fi

# Lint and types first: a lint error fails CI like a failing test.
lint: setup
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy

# What CI runs: everything a user would notice; tests marked `slow` (long learning curves, GPU) are left out.
test: lint
	HF_HUB_OFFLINE=1 xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q -ra -n auto --durations=25

# Everything, the slow tests too.
test-all: lint
	HF_HUB_OFFLINE=1 xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q -ra -n auto -m ""

bench: setup
	$(PY) bench/isbi.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist src/*.egg-info
