# Developer shortcuts. `make dev` builds the compiled core into the source tree (no pip), so
# several work trees can build and test side by side: run tests with `make test`.
PY ?= python
BUILD ?= build/dev
CUDA ?= OFF

.PHONY: dev test lint
dev:
	cmake -S . -B $(BUILD) -G Ninja -DPYCONCEPTS_CUDA=$(CUDA) \
	  -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$$(which $(PY))
	cmake --build $(BUILD)
	cp --remove-destination $(BUILD)/_core*.so $(BUILD)/_build_info.json pyconcepts/  # _core and, if built, _core_cuda

test:
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q

lint:
	ruff check . && ruff format --check . && mypy
