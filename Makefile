# Set-up and everyday commands. Every install goes through constraints.txt (CPU torch 2.13.0).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
SAMPLE := serving/samples/astronaut-lr.png

.PHONY: demo serve test install install-test clean load observe k8s chaos image image-gpu pod-test pod-test-gpu

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The serving set only (no torch): what `make demo` and `make serve` need.
install: $(BIN)/python
	$(PIP) -e .

# Search, training, export and the tests.
install-test: $(BIN)/python
	$(PIP) -e ".[train,test]"

# Main job: import the shipped models into the BentoML model store, start `bentoml serve` on
# 127.0.0.1, wait for /readyz, POST the bundled sample to /upscale, save upscaled.png, stop the server.
demo: install
	$(BIN)/python -m serving.demo --image $(SAMPLE) -o upscaled.png
	@echo "result: $(CURDIR)/upscaled.png"

# The service in the foreground (after the same store import); SRNAS_* variables configure it.
PORT ?= 3000
serve: install
	$(BIN)/srnas store-import
	$(BIN)/bentoml serve --host 127.0.0.1 --port $(PORT)

# Two passes: the unit and CLI tests on both CPUs (pytest-xdist), then the tests marked slow (real servers
# under load, with their own timing-sensitive checks) alone, so that they never share the CPUs.
test: install-test
	$(BIN)/python -m pytest -q -rs --durations=10 -n 2 --dist loadscope --no-loadscope-reorder -m "not slow"
	$(BIN)/python -m pytest -q -rs --durations=25 -m slow

# Locust against a freshly started `bentoml serve` (SHAPE = ramp | soak | spike | smoke | observe from
# loadtest/config.yaml); CSV, HTML and summary.json in $(LOAD_OUT), non-zero exit on an SLO breach.
SHAPE ?= soak
LOAD_OUT ?= runs/load-$(SHAPE)
load: install-test
	$(BIN)/python -m loadtest.run --shape $(SHAPE) --out $(LOAD_OUT)

# Debian's Prometheus on loopback with k8s/base/prometheus/rules.yaml, scraping the server under load;
# prints how the search's step-latency estimate held up.
# MODEL=DIR serves another model folder (it needs predicted latencies in its deploy.json).
observe: install-test
	$(BIN)/python -m loadtest.observe --out runs/observe $(if $(MODEL),--model $(MODEL))

# The abuse and fault scenarios (abandoned clients, bursts, random paths, bad inputs, an open-loop spike,
# SIGTERM and SIGKILL under load) against fresh servers, timed; the table goes into BENCHMARKS.md.
chaos: install-test
	$(BIN)/python -m loadtest.chaos --out runs/chaos --results bench/results/chaos.json --markdown BENCHMARKS.md

# Render both kustomize overlays to runs/k8s-<overlay>.yaml.
k8s: install-test
	mkdir -p runs
	for o in cpu gpu; do $(BIN)/kubectl kustomize k8s/overlays/$$o > runs/k8s-$$o.yaml || exit 1; done

# The serving image with podman, offline apart from the package registries (container/build.py): a Debian
# bookworm base made here with debootstrap (cached in ~/.cache/srnas), `bentoml build`, a Containerfile
# generated from the bento (its models, envs, non-root user), `podman build`. IMAGE=REF names it
# (default localhost/srnas:<newTag of k8s/base>); image-gpu: the GPU bento on the same base (onnxruntime-gpu).
# Needs root or passwordless sudo (debootstrap, rootful podman).
image: install-test
	$(BIN)/python -m container.build $(if $(IMAGE),--image $(IMAGE))

image-gpu: install-test
	$(BIN)/python -m container.build --gpu $(if $(IMAGE),--image $(IMAGE))

# The rendered CPU overlay's Deployment under `podman kube play` on that image: /readyz, /upscale, /metrics,
# uid and read-only root, a drain with a request in flight, `podman kube down`; figures in runs/image/pod/.
pod-test: image
	$(BIN)/python -m container.pod $(if $(IMAGE),--image $(IMAGE)) --json runs/image/pod/cpu.json

# The GPU overlay on this machine, which has no GPU: the server must refuse (never ready, the reason logged).
# One thread: the overlay's CPU limit (4) may exceed this machine's cores, which the server would refuse first.
pod-test-gpu: image-gpu
	$(BIN)/python -m container.pod --overlay gpu --expect-no-gpu --env SRNAS_THREADS=1 --env OMP_NUM_THREADS=1 \
		$(if $(IMAGE),--image $(IMAGE)) --json runs/image/pod/gpu.json

clean:
	rm -rf $(VENV) runs upscaled.png
