# The demo, the tests and the benchmark (see README.md and bench/README.md).
#
# PYTHON: the interpreter of the environment stsd is installed in (the
# README's set-up makes .venv); e.g. `make bench PYTHON=/path/to/venv/bin/python`.
PYTHON ?= .venv/bin/python
BENCH_OUT ?= build/bench
BENCH_ARGS ?=

.PHONY: demo test typecheck apidocs bench bench-throughput bench-scale bench-versus

demo:
	.venv/bin/python -m stsd.demo

test:
	.venv/bin/python -m pytest -q

# What .ci/run checks before the tests (configuration: mypy.ini).
typecheck:
	.venv/bin/mypy

# The API documentation from the epytext docstrings, into build/apidocs (.ci/run
# builds it too, and fails on any warning).
apidocs:
	.venv/bin/pydoctor --docformat=epytext --warnings-as-errors -q --html-output=build/apidocs stsd

# About three minutes on two cores; needs wrk (apt-get install -y wrk) and,
# for the profile of the daemon, py-spy (pip install py-spy) -- without it
# the profile is skipped.
bench: bench-throughput bench-scale

bench-throughput:
	@command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk"; exit 1; }
	@mkdir -p $(BENCH_OUT)
	$(PYTHON) -m bench.run --profile jwks-fresh --keep-profile $(BENCH_OUT)/profile-jwks-fresh.txt \
		--output $(BENCH_OUT)/throughput.json $(BENCH_ARGS)

bench-scale:
	@command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk"; exit 1; }
	@mkdir -p $(BENCH_OUT)
	$(PYTHON) -m bench.scale --daemon --output $(BENCH_OUT)/scale.json

# This tree against another checkout (VERSUS=DIR, with its own .venv), round by round.
bench-versus:
	@command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk"; exit 1; }
	@test -n "$(VERSUS)" || { echo "VERSUS=DIR: a checkout of another revision with its .venv"; exit 1; }
	@mkdir -p $(BENCH_OUT)
	$(PYTHON) -m bench.run --versus $(VERSUS) --output $(BENCH_OUT)/versus.json $(BENCH_ARGS)
