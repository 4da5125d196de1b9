# Two commands: `make demo` and `make test`. Both set up .venv first, and only when pyproject.toml or
# constraints.txt changed. The install is reproducible: exact versions from constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The native kernels (CMakeLists.txt) build against nothing but a C++ compiler (and nvcc, when present): rebuilt
# when a source changes, before anything that runs the model.
KERNELS_LIB := foresight_engine/kernels/_native/libforesight_kernels.so
KERNELS_SRC := CMakeLists.txt $(wildcard foresight_engine/kernels/csrc/*.h foresight_engine/kernels/csrc/*.cpp \
                                         foresight_engine/kernels/csrc/cuda/*.cu)
CMAKE_GENERATOR := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

.PHONY: demo test install bench kernels gpu-check ui ui-test clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(KERNELS_LIB): $(KERNELS_SRC)
	cmake -S . -B build/kernels $(CMAKE_GENERATOR) -DCMAKE_BUILD_TYPE=Release
	cmake --build build/kernels --parallel
	touch $@

install: $(STAMP)

kernels: $(KERNELS_LIB)

demo: $(STAMP) $(KERNELS_LIB)
	$(BIN)/foresight-engine predict --preset tiny --image assets/example.png \
		--prompt "What happens next? Describe the motion." --out out/demo
	@echo "demo video: $(CURDIR)/out/demo/prediction.mp4"

test: $(STAMP) $(KERNELS_LIB)
	$(BIN)/python -m pytest -q -p no:cacheprovider

gpu-check: $(STAMP) $(KERNELS_LIB)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m gpu

bench: $(STAMP) $(KERNELS_LIB)
	$(BIN)/python -m pytest bench -q -p no:cacheprovider

# the demo UI on http://127.0.0.1:7860 (Ctrl-C stops it)
ui: $(STAMP) $(KERNELS_LIB)
	$(BIN)/foresight-engine ui --preset tiny

# the opt-in browser test of the UI: needs Chromium (Debian: apt-get install -y chromium)
ui-test: $(STAMP) $(KERNELS_LIB)
	FORESIGHT_UI_TESTS=1 $(BIN)/python -m pytest tests/test_ui_browser.py -q -p no:cacheprovider

clean:
	rm -rf out .pytest_cache build/kernels foresight_engine/kernels/_native
