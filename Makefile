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

.PHONY: demo test install bench kernels gpu-check gpu-suite ui ui-test clean

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

bench: $(STAMP) $(KERNELS_LIB)
	$(BIN)/python -m pytest bench -q -p no:cacheprovider

# The GPU acceptance suite (after `make test`, on a machine with an NVIDIA GPU): `pytest -m gpu` (TensorRT and
# Torch-TensorRT builds checked against eager on the GPU, CUDA graphs, streams, the kernels' GPU paths) and the GPU
# bench; writes out/gpu-check/report.{md,json}. Without a GPU it stops at once, before touching the environment.
gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none): nothing to check; run it on a GPU machine"; exit 2; }
	@$(MAKE) --no-print-directory gpu-suite

gpu-suite: $(STAMP) $(KERNELS_LIB)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,tensorrt,gpu]'
	$(BIN)/python -m foresight_engine.bench.gpu_check --out out/gpu-check

# the demo UI on http://127.0.0.1:7860 (Ctrl-C stops it)
ui: $(STAMP) $(KERNELS_LIB)
	$(BIN)/foresight-engine ui --preset tiny

# the opt-in browser test of the UI: needs Chromium (Debian: apt-get install -y chromium)
ui-test: $(STAMP) $(KERNELS_LIB)
	FORESIGHT_UI_TESTS=1 $(BIN)/python -m pytest tests/test_ui_browser.py -q -p no:cacheprovider

clean:
	rm -rf out .pytest_cache build/kernels foresight_engine/kernels/_native
