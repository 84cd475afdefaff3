# The two entry points of the README. Both create .venv when missing, install the CPU build of
# torch first (so pip does not reach for a multi-GB CUDA build), then the project.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tubelet-installed

.PHONY: setup torchcodec demo test bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The second decoding backend. It needs FFmpeg's shared libraries on the system (Debian: the ffmpeg
# package); without them it does not import, tubelet keeps to PyAV and its tests skip. The range is
# the torchcodec releases built for the torch pinned above.
torchcodec: $(STAMP)
	$(PY) -m pip install --quiet 'torchcodec>=0.12,<0.14'

demo: $(STAMP)
	$(VENV)/bin/tubelet demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks fuzz
	$(PY) -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs .pytest_cache
