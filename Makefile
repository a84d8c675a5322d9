# One command each: `make demo` (set up and run the main job), `make test` (set up and run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): setup.py constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

DEMO_STEPS ?= 500

# Trains the tiny config on built-in synthetic subjects (ICT-FaceKit head when ../shared has it), then
# evaluates held-out identities: outputs/demo/eval_test.{json,png}, TensorBoard logs in outputs/demo.
demo: $(STAMP)
	$(BIN)/headsup render demo --out outputs/render_demo.png
	$(BIN)/headsup train --config configs/headsup.py:tiny --workdir outputs/demo --config.optim.total_steps=$(DEMO_STEPS)
	$(BIN)/headsup eval --workdir outputs/demo --split test --subjects 64 --targets 4

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=30 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/render.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
