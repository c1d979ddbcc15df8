# FlexPL: `make run` runs the main job on the default scenario, `make test` runs the tests.
# Both set everything up on a fresh machine: .venv, the pinned CPU build of torch first,
# then the project with its extras, and Fashion-MNIST from Debian when it is missing.
# The ray extra (flexpl sweep --ray) is part of setup: its wheel is 79 MB and installs in
# 15-30 s, and its tests (tests/test_ray.py, a local Ray) run in `make test` as in CI;
# FLEXPL_REQUIRE_RAY makes them fail, not skip, where Ray is missing.
# The track extra (--track tensorboard|mlflow, pandas) is part of setup too; tests/integration/
# test_track.py starts its own MLflow server, and FLEXPL_REQUIRE_TRACK makes it fail where it is missing.

VENV   ?= .venv
PY     := $(VENV)/bin/python
FLEXPL := $(VENV)/bin/flexpl
STAMP  := $(VENV)/.flexpl-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
OUT    ?= results/make-run
# a few minutes on 2 cores: 3 rounds over a 12k-sample slice of Fashion-MNIST
RUN_SETS ?= --set training.rounds=3 --set data.max_train=12000

.PHONY: setup data run test test-kernels test-ray lint docs bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray,track]'
	touch $(STAMP)

data:
	@if [ -z "$$FLEXPL_DATA" ] && [ ! -e $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "warning: could not install dataset-fashion-mnist; FlexPL will look in FLEXPL_DATA or download it"; \
	fi

run: setup data
	$(FLEXPL) compare edge-fmnist $(RUN_SETS) --out $(OUT)

test: setup data
	FLEXPL_REQUIRE_RAY=1 FLEXPL_REQUIRE_TRACK=1 $(PY) -m pytest

# the equivalence tests (two execution paths compared) again under ATEN's portable kernels, and
# under AVX2 where this CPU has more (AVX-512): a tolerance that holds on one kernel path only fails here
test-kernels: setup data
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -m equivalence -p no:cacheprovider
	@if grep -q avx512 /proc/cpuinfo 2>/dev/null; then \
	  ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -m equivalence -p no:cacheprovider; fi

# only the Ray tests (sweep --ray, plan --validate K --ray), with the extra installed
test-ray: setup data
	$(PY) -m pip install -q -e '.[ray]'
	FLEXPL_REQUIRE_RAY=1 $(PY) -m pytest -m ray

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools

# the documentation site (MkDocs Material + mkdocstrings) into site/; the reference pages are generated
# from the code at build time (tools/mkdocs_hooks.py); the docs extra is installed when it is missing
docs: setup
	@$(PY) -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || $(PY) -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: setup data
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/simulator.py
	$(PY) benchmarks/planner.py

clean:
	rm -rf $(VENV) results site .pytest_cache
