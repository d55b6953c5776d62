# labkit: `make lab-1` runs a lab, `make check-1` grades it, `make test` runs the kit's own tests
# (`make test-grader` the class-scale ones).
# Everything is installed into .venv by `make install` (the other targets depend on it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LABKIT := $(BIN)/labkit
RUNTIME ?= auto
SUBMISSION ?=
ARGS ?=
STAMP  := $(VENV)/.installed

.PHONY: install doctor test test-grader up down labs clean bench

install: $(STAMP)
$(STAMP): pyproject.toml
	@command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; \
	    else echo "note: rabbitmq-server not found (labs that need RabbitMQ): sudo apt-get install rabbitmq-server"; fi; }
	@{ command -v bwrap && command -v nft; } >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap nftables; \
	    else echo "note: bubblewrap/nftables not found (isolated grading, labkit grade): sudo apt-get install bubblewrap nftables"; fi; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

doctor: install
	$(LABKIT) doctor

labs: install
	$(LABKIT) labs

# What a run proves is split from how often it is proven (pytest markers, see tests/conftest.py):
# `make test` runs the unit tests, the Docker tier (skipped without a daemon unless
# LABKIT_REQUIRE_DOCKER=1), each lab's reference graded once and each mutant graded once; the longest
# go first. `make test-grader` grades at class scale: the synthetic class and the starters (`-m
# class_scale`), every mutant again with fresh seeds and each reference repeatedly, GRADER_JOBS graded
# runs at once (a sample of `python -m tests.bench.consecutive`), and a mutation sample (`labkit mutate`).
# Costs (docs/testing.md): make test ~23 min on 2 cores, make test-grader ~42 min.
# pytest's exit code 5 (no test selected) is not a failure.
TEST_WORKERS ?= 6
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not class_scale" $(ARGS); \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

GRADER_JOBS ?= 6
GRADER_SAMPLE ?= --seeds 1 --reference-runs 3
MUTATE_SAMPLE ?= --sample 6
test-grader: install
	$(BIN)/pytest -q -n 2 --dist loadgroup -m class_scale $(ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
	$(BIN)/python -m tests.bench.consecutive $(GRADER_SAMPLE) --jobs $(GRADER_JOBS)
	for n in 1 2 3 4; do $(LABKIT) mutate lab-$$n $(MUTATE_SAMPLE) --jobs $(GRADER_JOBS) --runtime native \
	  --out results/mutate/lab-$$n || exit 1; done

up: install
	$(LABKIT) up $(LAB) --runtime $(RUNTIME)

down: install
	$(LABKIT) down

# make lab-1 [SUBMISSION=path] [RUNTIME=native]  /  make check-1 [SUBMISSION=path] [ONLY=check-id] [ARGS="--seed 7"]
# A score below full is a result, not a make error: check-N exits 0 once graded (STRICT=1, or
# `labkit check` itself as CI runs it, exits 1 unless every check passed).
lab-%: install
	$(LABKIT) run lab-$* --runtime $(RUNTIME) $(if $(SUBMISSION),--submission $(SUBMISSION)) $(ARGS)

check-%: install
	$(LABKIT) check lab-$* --runtime $(RUNTIME) $(if $(SUBMISSION),--submission $(SUBMISSION)) $(foreach c,$(ONLY),--only $(c)) $(if $(STRICT),,--exit-zero) $(ARGS)

# make grade-1 SUBMISSIONS=path/to/class [OUT=graded/lab-1] [ARGS="--jobs 2 --repeat 3 --trust-submissions"]
grade-%: install
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade-$* SUBMISSIONS=folder-or-archive [OUT=...] [ARGS=...]"; exit 2; }
	$(LABKIT) grade lab-$* $(SUBMISSIONS) --out $(or $(OUT),graded/lab-$*) --runtime $(RUNTIME) $(ARGS)

# make bench [ARGS="--rounds 5 --only lab1,lab4"]: every benchmark, one table of figures at the end
# (best of 3 rounds, min/median/max, each ratio beside its anchor); ARGS=--smoke: tiny sizes, one round.
bench: install
	$(BIN)/python -m tests.bench $(ARGS)

clean:
	rm -rf $(VENV) .labkit results
