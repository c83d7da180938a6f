# Two commands do all set-up on a fresh machine (see README):
#   make app    serve the app on the embedded default dataset, to this machine only
#               (http://localhost:5006/app); make app HOST=0.0.0.0: a workshop room with a password
#   make test   run the whole test suite (installs Debian's chromium for the browser tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 5006
HOST   ?= 127.0.0.1
# in a room, one more name the page is opened by (e.g. the machine's host name)
ORIGIN ?=
DATA   ?= data/default

.PHONY: app test bench install chromium default model dist notebooks

install: $(VENV)/.installed

# torch is pinned here, not in pyproject.toml (which asks torch>=2.5 only, so that installing
# the package elsewhere keeps a CUDA build): the CPU build that lies on these machines' disk; an
# unpinned torch would pull a multi-GB CUDA build. Installed first, the package then keeps it.
# The extras: what the tests need (the event generator, ONNX, UMAP, ROOT files, figures,
# the test tools).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,generate,onnx,embed,root,figures,anomaly,dask]'
	# the oracle for the model test: its model file needs only torch, a full install pulls
	# scipy, pandas, tables, tensorboard and more
	$(BIN)/python -m pip install --quiet --no-deps weaver-core==0.5.3
	touch $@

# app/serve.py makes the `panel serve` arguments: 127.0.0.1 and its own origins by default; any
# other HOST is a workshop room (the address to share, a generated password, those origins only)
app: install
	$(BIN)/python app/serve.py --host $(HOST) --port $(PORT) --data $(DATA) \
	  $(if $(ORIGIN),--origin $(ORIGIN))

# The workshop notebooks in JupyterLab, on this machine only (http://localhost:$(NB_PORT)/lab), with
# .venv's interpreter as the kernel. JupyterLab is installed into .venv on first use (not by
# `make install`: the tests need nbclient and nbconvert only).
NB_PORT ?= 8888
notebooks: install
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet 'jupyterlab>=4'
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(NB_PORT) --ServerApp.root_dir=notebooks

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: install chromium
	$(BIN)/python -m pytest -q

# The wheel and the sdist in dist/ (the wheel carries the library, the app and the embedded
# default: pip install dist/sophon_explorer-*.whl && sophon serve). Built with this
# environment's setuptools, without network.
dist: install
	$(BIN)/python -m pip install --quiet build
	$(BIN)/python -m build --no-isolation --outdir dist

bench: install
	$(BIN)/python benchmarks/bench_core.py --jets 1000000 10000000

# Rebuild the embedded default dataset from scratch with the model $(DEFAULT_MODEL): an SM
# sample of 1.085 M events (its QCD from pTHat 250 GeV, the rest from 200) and a two-million-event
# QCD extension from pTHat 300 GeV (both resumable, model-independent, so they come first),
# combined without bias (`sophon extend-sm`), scored, thinned to the storage budget, embedded,
# and the README and acceptance pictures redrawn; the manifest records each rewrite of the
# shipped file (loading verifies it). Intermediate files go to $(WORK). Design and timings:
# docs/default_dataset.md.
WORK          ?= build/default
DEFAULT_MODEL ?= data/models/sophon-small-v3.pt
SM_EVENTS     ?= 1085000
SM_PROCESSES  ?= QCD=845,W+jets=70,Z+jets=70,ttbar=60,single top=12,diboson=14,Higgs=14
QCD_EVENTS    ?= 2000000
THIN_KEEP     ?= 0.09
default: install chromium
	test -f $(WORK)/sm/SM.parquet || $(BIN)/sophon generate sm --events $(SM_EVENTS) --seed 28 \
	  --no-mpi --lumi 138 --bias-power 1.5 --processes "$(SM_PROCESSES)" \
	  --process-pt-hat-min QCD=250 --quiet -o $(WORK)/sm
	test -f $(WORK)/qcd300/SM.parquet || $(BIN)/sophon generate sm --events $(QCD_EVENTS) \
	  --seed 29 --no-mpi --lumi 138 --bias-power 1.5 --pt-hat-min 300 --processes QCD=1 --quiet \
	  -o $(WORK)/qcd300
	test -f $(WORK)/combined/SM.parquet || $(BIN)/sophon extend-sm $(WORK)/sm/SM.parquet \
	  $(WORK)/qcd300/SM.parquet -o $(WORK)/combined/SM.parquet --sdmass-window 20 500
	$(MAKE) $(DEFAULT_MODEL)
	$(BIN)/sophon score $(WORK)/combined/SM.parquet --model $(DEFAULT_MODEL) -o $(WORK)/scored \
	  --precision fp32
	$(BIN)/sophon package $(WORK)/scored -o data/default/sm.parquet --model $(DEFAULT_MODEL) \
	  --constituents $(WORK)/combined/SM.parquet --constituent-jets 1500 --latent-codes \
	  --protect-efficiency 1e-3 --thin-keep $(THIN_KEEP) --seed 0
	$(BIN)/sophon manifest record data/default/sm.parquet
	$(BIN)/sophon embed data/default --seed 0
	$(BIN)/sophon manifest record data/default/sm.parquet
	$(BIN)/python docs/screenshots.py --data data/default

# The default's model, sophon-small-v3 (docs/training.md): sophon-small-v2's backbone with its
# head retrained on frozen latents with the presets' loss beside the cross-entropy, on 210,000
# new events (seed 21); about 15 minutes on two cores. (sophon-small-v2 itself: `make model`.)
HEAD_WORK ?= build/head
data/models/sophon-small-v3.pt: | install
	test -f $(HEAD_WORK)/run21/QCD.parquet || $(BIN)/sophon generate training --no-mpi --quiet \
	  --events 210000 --seed 21 --parts res2p=0.25,res34p=0.30,qcd=0.45 -o $(HEAD_WORK)/run21
	$(BIN)/sophon train-head data/models/sophon-small-v2.pt $(HEAD_WORK)/run21/*.parquet -o $@ \
	  --cache $(HEAD_WORK)/latents --tail-weight 1
	$(BIN)/sophon manifest record $@

# The next default model (docs/training.md): 8 x 210,000 training events (2.1 M selected jets) and
# an independent test sample, then training in resumable runs of at most $(MINUTES) minutes, then
# the model-card figures. Run it again to continue: finished generation folders are skipped and
# training resumes from its state file in $(MODEL_WORK). On a GPU machine the same target trains
# the published configuration: make model CONFIG=sophon DEVICE=cuda MODEL_NAME=sophon-gpu.
MODEL_NAME ?= sophon-small-v2
MODEL_WORK ?= build/model
CONFIG     ?= small
DEVICE     ?= auto
MINUTES    ?= 150
TRAIN_RUNS ?= 1 2 3 4 5 6 7 8
model: install
	@for run in $(TRAIN_RUNS); do \
	  test -f $(MODEL_WORK)/run$$run/QCD.parquet || $(BIN)/sophon generate training --no-mpi \
	    --quiet --events 210000 --seed $$((10 + run)) --parts res2p=0.15,res34p=0.55,qcd=0.30 \
	    -o $(MODEL_WORK)/run$$run || exit 1; \
	done
	test -f $(MODEL_WORK)/test/QCD.parquet || $(BIN)/sophon generate training --no-mpi --quiet \
	  --events 60000 --seed 90 --parts res2p=0.25,res34p=0.25,qcd=0.5 -o $(MODEL_WORK)/test
	$(BIN)/sophon train $(MODEL_WORK)/run*/*.parquet -o data/models/$(MODEL_NAME).pt \
	  --config $(CONFIG) --device $(DEVICE) --epochs 18 --samples-per-epoch 150000 \
	  --validation-fraction 0.02 --seed 0 --state $(MODEL_WORK)/state.pt --max-minutes $(MINUTES) \
	  $$(test -f $(MODEL_WORK)/state.pt && echo --resume $(MODEL_WORK)/state.pt)
	$(BIN)/sophon manifest record data/models/$(MODEL_NAME).pt
	$(BIN)/sophon evaluate data/models/$(MODEL_NAME).pt $(MODEL_WORK)/test/*.parquet \
	  --device $(DEVICE) -o $(MODEL_WORK)/evaluation.json
