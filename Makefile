# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: setup demo test bench lint clean

setup: .venv/.synced

# uv is installed with pip when missing; the environment is exactly uv.lock (no resolution on install).
# Bytecode is compiled once at install: every stage, flow run and worker is a new Python process, and where
# PYTHONDONTWRITEBYTECODE is set each would otherwise compile torch, MLflow and Prefect again (7.5 -> 4.8 s).
# The bundled Triton's python-backend stub was built against numpy 1.x: the photo-in model's bytes tensors need
# numpy<2 on its path, installed (hash-pinned) beside the environment, never into it.
.venv/.synced: pyproject.toml uv.lock infra/triton/stub-requirements.txt
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-groups --compile-bytecode
	$(UV) pip install --no-config --quiet --python .venv/bin/python --target .venv/triton-stub --no-deps \
	  --require-hashes -r infra/triton/stub-requirements.txt
	@touch $@

demo: setup
	test -d data/raw -a -d data/eval_sets || $(UV) run --frozen faceforge sample
	$(UV) run --frozen dvc add --quiet data/raw data/eval_sets   # photos are data: versioned like every output
	$(UV) run --frozen dvc repro
	$(UV) run --frozen faceforge remote                          # the configured remote, else a folder on this machine
	$(UV) run --frozen dvc push

test: setup
	$(UV) run --frozen pytest

bench: setup
	$(UV) run --frozen python -m bench.demo   # make demo in a fresh clone of HEAD, part by part (goal <= 10 min)
	$(UV) run --frozen python -m bench.data_stages
	$(UV) run --frozen python -m bench.data_scale   # 1k / 10k / 100k photos up to pack, DVC at scale (~2 h)
	$(UV) run --frozen python -m bench.ray_data_scale   # 10k photos on Ray Data (two loopback nodes) vs the process pool
	$(UV) run --frozen python -m bench.train_head
	$(UV) run --frozen python -m bench.train_e2e
	$(UV) run --frozen python -m bench.eval_ijbc
	$(UV) run --frozen python -m bench.eval_scale   # faceforge eval ijbc --model on 10k / 100k images vs bare ONNX Runtime
	$(UV) run --frozen python -m bench.quantize
	$(UV) run --frozen python -m bench.pretrained   # from scratch vs SFace imported / fine-tuned / distilled
	$(UV) run --frozen python -m bench.warm_retrain   # warm retrain after new identities vs from scratch
	$(UV) run --frozen python -m bench.triton_serving
	$(UV) run --frozen python -m bench.gallery_identify   # identify latency at 10^4 / 10^5 / 10^6 templates (~15 min)
	$(UV) run --frozen python -m bench.gallery_reembed   # re-embedding 10^5 enrolled faces vs bare ONNX Runtime
	$(UV) run --frozen python -m bench.photo_serving     # photo-in model: load (1/8/32) + 3-minute soak
	$(UV) run --frozen python -m bench.serving_metrics   # metrics + drift capture on vs off, side by side, + soak
	$(UV) run --frozen python -m bench.train_gpu   # measures only where CUDA is present
	$(UV) run --frozen python -m bench.train_gpu_vs_arcface   # idem; arcface_torch's column with $$ARCFACE_TORCH

lint: setup
	$(UV) run --frozen ruff check .

clean:
	rm -rf data/detect data/detect_cache data/aligned data/quality data/packed data/train data/eval data/export data/quantize data/publish data/local_serving reports/*.json reports/*.csv reports/bench
