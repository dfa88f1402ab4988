# napari-segsuite: `make demo` and `make test` do the whole set-up on a fresh Debian machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.segsuite-installed
DEMO_OUT ?= demo-output

.PHONY: setup demo test bench clean

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
		xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/segsuite demo --headless --out $(DEMO_OUT); \
	fi

test: setup
	HF_HUB_OFFLINE=1 xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q -ra

bench: setup
	$(PY) bench/isbi.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist src/*.egg-info
