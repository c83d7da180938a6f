# Two commands do all set-up on a fresh machine (see README):
#   make app    serve the app on the embedded default dataset (http://localhost:5006/app)
#   make test   run the whole test suite (installs Debian's chromium for the browser tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 5006
DATA   ?= data/default

.PHONY: app test bench install chromium

install: $(VENV)/.installed

# torch is pinned to the CPU build that lies on these machines' disk; an unpinned torch would
# pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# the oracle for the model test: its model file needs only torch, a full install pulls
	# scipy, pandas, tables, tensorboard and more
	$(BIN)/python -m pip install --quiet --no-deps weaver-core==0.5.3
	touch $@

app: install
	$(BIN)/panel serve app --port $(PORT) --allow-websocket-origin='*' --args --data $(DATA)

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: install chromium
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_core.py --jets 1000000 10000000
