# Two commands: `make demo` and `make test`. Both set up .venv first, and only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
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

clean:
	rm -rf out .pytest_cache
