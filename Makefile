# Developer shortcuts. `make dev` builds the compiled core into the source tree (no pip), so
# several work trees can build and test side by side: run tests with `make test`.
PY ?= python
BUILD ?= build/dev
CUDA ?= OFF

.PHONY: dev test lint sanitize fuzz
dev:
	cmake -S . -B $(BUILD) -G Ninja -DPYCONCEPTS_CUDA=$(CUDA) \
	  -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$$(which $(PY))
	cmake --build $(BUILD)
	cp --remove-destination $(BUILD)/_core*.so $(BUILD)/_build_info.json pyconcepts/  # _core and, if built, _core_cuda

test:
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q

lint:
	ruff check . && ruff format --check . && mypy

# ASan + UBSan build of the core (build/sanitize), tests/ops run against it: see the script.
sanitize:
	PY=$(PY) scripts/sanitize.sh

# libFuzzer harnesses (fuzz/fuzz_*.cpp, one per kernel entry point) linked with the CPU kernels,
# all under ASan + UBSan; needs clang with libFuzzer and libomp. Run them with scripts/fuzz.sh.
# (-Wno-pass-failed: at -O1 clang does not honour the kernels' `omp simd` hints and says so.)
FUZZ_CXX ?= clang++
FUZZ_BUILD ?= build/fuzz
FUZZ_FLAGS = -std=c++17 -O1 -g -march=native -fno-omit-frame-pointer -fopenmp -Wall -Wextra \
  -Wno-pass-failed -fsanitize=address,undefined -fno-sanitize-recover=undefined -Icsrc
FUZZ_CORE = $(patsubst csrc/cpu/%.cpp,$(FUZZ_BUILD)/core/%.o,$(wildcard csrc/cpu/*.cpp))
FUZZERS = $(patsubst fuzz/%.cpp,$(FUZZ_BUILD)/%,$(wildcard fuzz/fuzz_*.cpp))

fuzz: $(FUZZERS)
.SECONDARY: $(FUZZ_CORE)  # keep the kernel objects between harness builds

$(FUZZ_BUILD)/core/%.o: csrc/cpu/%.cpp $(wildcard csrc/cpu/*.h csrc/common/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.cpp $(FUZZ_CORE) $(wildcard fuzz/*.h)
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer $< $(FUZZ_CORE) -o $@
