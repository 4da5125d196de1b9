# Two commands: `make demo` and `make test`. Both set up .venv first, and only when pyproject.toml or
# constraints.txt changed. The install is reproducible: exact versions from constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench ui ui-test clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/foresight-engine predict --preset tiny --image assets/example.png \
		--prompt "What happens next? Describe the motion." --out out/demo
	@echo "demo video: $(CURDIR)/out/demo/prediction.mp4"

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m pytest bench -q -p no:cacheprovider

# the demo UI on http://127.0.0.1:7860 (Ctrl-C stops it)
ui: $(STAMP)
	$(BIN)/foresight-engine ui --preset tiny

# the opt-in browser test of the UI: needs Chromium (Debian: apt-get install -y chromium)
ui-test: $(STAMP)
	FORESIGHT_UI_TESTS=1 $(BIN)/python -m pytest tests/test_ui_browser.py -q -p no:cacheprovider

clean:
	rm -rf out .pytest_cache
