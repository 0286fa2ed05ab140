# Set-up, run and test Sightline on Debian. Each target installs what it needs first.
#   make run    index knowledge_base/ and serve the app on http://127.0.0.1:7860
#   make test   run the whole test suite (unit, real-data and browser tests)

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# Debian packages: Tesseract for OCR, ffmpeg for audio decoding, espeak-ng and sox for
# synthesized speech in tests, Chromium for the browser tests, a C++ toolchain to build
# llama-cpp-python for the language-model tests.
APP_DEB := python3-venv tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd ffmpeg fonts-dejavu-core
TEST_DEB := chromium espeak-ng sox build-essential

.PHONY: run test install install-dev system-app system-test index bench clean

run: install
	$(BIN)/sightline serve

test: install-dev
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

index: install
	$(BIN)/sightline index

bench: install-dev
	$(BIN)/python bench/run_all.py

system-app:
	scripts/install-debian-packages $(APP_DEB)

system-test:
	scripts/install-debian-packages $(APP_DEB) $(TEST_DEB)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is installed on its own first so that no other package pulls a CUDA build.
install: system-app $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .

# GGML_NATIVE=OFF builds llama.cpp for any x86-64 CPU, not only the one that built the wheel.
install-dev: system-test $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet -e '.[dev]'

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
