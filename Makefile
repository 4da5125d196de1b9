# Two commands: `make demo` and `make test`. Both set up .venv first, and only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean gpu-check gpu-suite

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

# The GPU acceptance suite (after `make test`, on a machine with an NVIDIA GPU): TensorRT / Torch-TensorRT builds
# checked against eager on the GPU, CUDA graphs, streams, the GPU bench; writes out/gpu-check/report.{md,json}.
# Without a GPU it stops at once, before touching the environment.
gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none): nothing to check; run it on a GPU machine"; exit 2; }
	@$(MAKE) --no-print-directory gpu-suite

gpu-suite: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,tensorrt,gpu]'
	$(BIN)/python -m foresight_engine.bench.gpu_check --out out/gpu-check

clean:
	rm -rf out .pytest_cache
