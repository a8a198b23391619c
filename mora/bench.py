"""Training cost (Table 5): a whole-model training step of every method, each measured in a fresh process.

    python scripts/bench_step.py                       # CPU: tiny_llama and a LLaMA-2-7B-width slice (≈5 min)
    python scripts/bench_step.py --device cuda         # GPU: the 4-layer LLaMA-2-7B-width model, bf16, 4 × 2048
    make reproduce-table5 [DEVICE=cuda]                # the above, then results/table5.md

One *step* is what the trainer does per optimizer step: forward with labels, backward, AdamW step, zero
grads — on a random-init LLaMA (:data:`MODELS`), with each method attached by :func:`mora.methods.build`
exactly as the trainer attaches it (``MethodConfig`` defaults: dropout 0.05, all seven projections) and
AdamW over its parameter groups.  Rows (:data:`METHODS`): the frozen base (only the input embeddings train,
the floor any adapter adds to), full fine-tuning, and LoRA, MoRA rope, MoRA sharing and DoRA at r=8 and
r=256.

Each (model, method) runs in its own subprocess (``python -m mora.bench measure ...``), so that the peak
memory is that method's alone: CUDA's max allocated on a GPU, the process's peak RSS on a CPU (which
includes the ≈0.3–0.5 GB every torch process holds).  Its times are the median of ``steps`` steps after
``warmup`` steps, each bracketed by device synchronisations.  Every row is written as one run result
(the suite's ``result.json`` schema, :mod:`mora.results`) to ``runs/table5/<name>/`` and collected into
``results/runs/table5/<name>.json``; rows of one invocation share a ``bench.session`` id, and the ratios
to LoRA are taken within a session (same machine, same load), never across.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import envinfo
from .methods import MethodConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device | str) -> None:
    """Wait for ``device``'s queued work (a no-op on a CPU), so that a wall-clock interval covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device | str) -> float:
    """CUDA's max allocated on ``device``, or this process's peak resident set size on a CPU (MiB)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def device_description(device: torch.device | str) -> str:
    """``NVIDIA H200 (139.8 GiB), CUDA 13.0`` or ``AMD EPYC, 2 logical cores (2 usable)``."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.1f} GiB), CUDA {torch.version.cuda}"
    cpu = envinfo.capture()["cpu"]
    return f"{cpu['model'] or 'unknown CPU'}, {cpu['cores']} logical cores ({cpu['usable_cores']} usable)"


# ---------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class BenchModel:
    """A random-init LLaMA to time training steps on, with its token batch and step counts."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    batch: int
    seq_len: int
    dtype: str
    warmup: int
    steps: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def build(self, device: torch.device | str):
        """The model on ``device`` in ``dtype``, drawn from torch's global RNG (seed it first)."""
        from transformers import AutoModelForCausalLM, LlamaConfig

        config = LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads, num_key_value_heads=self.num_heads,
            max_position_embeddings=max(self.seq_len, 128), tie_word_embeddings=False, use_cache=False,
        )
        config._name_or_path = self.name
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=DTYPES[self.dtype])


def conf_model(name: str, **bench) -> BenchModel:
    """The sizes of ``conf/model/<name>.yaml`` (a ``source: random`` model), its tokenizer's vocabulary, and
    the batch and step counts in ``bench``."""
    from omegaconf import OmegaConf

    from .config import ModelConfig
    from .models import load_tokenizer

    cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{name}.yaml"), resolve=True))
    if cfg.source != "random":
        raise ValueError(f"model={name} is {cfg.source}; the cost benchmark times random-init models only")
    return BenchModel(name=name, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                      num_layers=cfg.num_layers, num_heads=cfg.num_heads, vocab_size=len(load_tokenizer(cfg)),
                      dtype=cfg.dtype, **bench)


def _llama2_7b_width(layers: int, **rest) -> BenchModel:
    """LLaMA-2-7B's layer (hidden 4096, 32 heads, SwiGLU 11008), ``layers`` of them."""
    return BenchModel(name=f"llama2_7b_width_{layers}l", hidden_size=4096, intermediate_size=11008, num_layers=layers,
                      num_heads=32, **rest)


#: The benchmark's models.  ``llama7b_slice`` is one LLaMA-2-7B layer on a CPU: a 4k vocabulary (not 32k) keeps
#: the embedding and the LM head at 8% of the step, near their 2% share in the 32-layer model, instead of 40%.
MODELS = {
    "tiny_llama": lambda: conf_model("tiny_llama", batch=16, seq_len=128, warmup=3, steps=10),
    "llama7b_slice": lambda: _llama2_7b_width(1, vocab_size=4096, batch=1, seq_len=64, dtype="float32",
                                              warmup=1, steps=5),
    "llama7b_4layer": lambda: _llama2_7b_width(4, vocab_size=32000, batch=4, seq_len=2048, dtype="bfloat16",
                                               warmup=3, steps=10),
}
DEFAULT_MODELS = {"cpu": ("tiny_llama", "llama7b_slice"), "cuda": ("llama7b_4layer",)}


# ---------------------------------------------------------------------------------------------- methods
#: LoRA's α at each rank, as the paper sets it (v1 Table 5); it scales, never times.
LORA_ALPHA = {8: 16.0, 256: 128.0}


@dataclass(frozen=True)
class BenchMethod:
    """One row: a method of :mod:`mora.methods` (``frozen`` = only the input embeddings train) at rank ``r``."""

    key: str  # frozen | fft | lora | dora | mora_rope | mora_sharing
    r: int | None = None

    def config(self) -> MethodConfig | None:
        """The ``MethodConfig`` the trainer would build; None for the frozen base."""
        if self.key == "frozen":
            return None
        if self.key == "fft":
            return MethodConfig(name="fft")
        if self.key.startswith("mora_"):
            return MethodConfig(name="mora", r=self.r, compression=self.key.removeprefix("mora_"))
        return MethodConfig(name=self.key, r=self.r, alpha=LORA_ALPHA.get(self.r, 2.0 * self.r))

    @property
    def label(self) -> str:
        return self.key + (f"-r{self.r}" if self.r else "")

    @classmethod
    def parse(cls, label: str) -> BenchMethod:
        """``mora_rope-r8`` → BenchMethod("mora_rope", 8); ``fft``, ``frozen`` take no rank."""
        key, _, rank = label.partition("-r")
        ranked = ("lora", "dora", "mora_rope", "mora_sharing")
        if key not in ("frozen", "fft", *ranked) or bool(rank) != (key in ranked) or not (rank or "0").isdigit():
            raise ValueError(f"unknown Table 5 row {label!r}: use frozen, fft or <{'|'.join(ranked)}>-r<rank>")
        return cls(key, int(rank) if rank else None)


METHODS = [BenchMethod("frozen"), BenchMethod("fft")] + [
    BenchMethod(key, r) for r in (8, 256) for key in ("lora", "mora_rope", "mora_sharing", "dora")
]


# ---------------------------------------------------------------------------------------------- one row
def attach(model, method: BenchMethod, lr: float):
    """``(model, AdamW parameter groups)`` with ``method`` attached as the trainer attaches it."""
    from .methods import build

    cfg = method.config()
    if cfg is not None:
        trainable = build(model, cfg, lr=lr)
        return trainable.model, trainable.param_groups
    model.requires_grad_(False)
    embeddings = model.get_input_embeddings().requires_grad_(True)
    return model, [{"params": list(embeddings.parameters()), "lr": lr, "weight_decay": 0.0}]


def measure(spec: BenchModel, method: BenchMethod, device: str, seed: int = 0, lr: float = 1e-4) -> dict:
    """Time ``spec.warmup + spec.steps`` training steps of ``method`` on ``spec``; run it in a fresh process."""
    torch.manual_seed(seed)
    model, groups = attach(spec.build(device), method, lr)
    model.train()
    optimizer = torch.optim.AdamW(groups, lr=lr)  # as MoraTrainer.create_optimizer (default betas)
    ids = torch.randint(0, spec.vocab_size, (spec.batch, spec.seq_len), device=device)
    step_s = []
    for _ in range(spec.warmup + spec.steps):
        synchronize(device)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        step_s.append(time.perf_counter() - start)
    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f"{method.label} on {spec.name}: the loss is {loss.item()}")
    timed = step_s[spec.warmup:]
    params = list(model.parameters())
    return {
        "step_ms": [1e3 * s for s in timed],
        "ms_per_step": 1e3 * statistics.median(timed),
        "tokens_per_s": spec.tokens / statistics.median(timed),
        "peak_mem_mb": peak_memory_mb(device),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
        "device": device_description(device),
        "env": envinfo.capture(),
    }


def run_isolated(spec: BenchModel, method: BenchMethod, device: str, seed: int) -> dict:
    """:func:`measure` in a fresh ``python -m mora.bench measure`` process; its JSON, plus its wall time."""
    command = [sys.executable, "-m", "mora.bench", "measure", json.dumps(dataclasses.asdict(spec)), method.label,
               "--device", device, "--seed", str(seed)]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{spec.name} {method.label} failed (exit {done.returncode}): {tail}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["wall_s"] = time.time() - started
    return row


# ---------------------------------------------------------------------------------------------- a session
def result_record(spec: BenchModel, method: BenchMethod, row: dict, session: dict) -> dict:
    """One row as a run result (:mod:`mora.results` schema), so ``mora.tables`` and its index read it."""
    cfg = method.config()
    method_dict = dataclasses.asdict(cfg) if cfg else {"name": "frozen", "trains": "input embeddings only"}
    name = f"table5-{session['device_kind']}-{spec.name}-{method.label}"
    config = {
        "experiment": "table5", "scale": session["device_kind"], "method": method_dict,
        "model": {**dataclasses.asdict(spec), "source": "random"},
        "train": {"global_batch": spec.batch, "micro_batch": spec.batch, "seq_len": spec.seq_len,
                  "max_steps": spec.warmup + spec.steps, "precision": spec.dtype},
        "optim": {"name": "AdamW", "lr": 1e-4},
        "bench": {"kind": "step", **session, "warmup": spec.warmup, "steps": spec.steps},
    }
    metrics = {k: row[k] for k in ("ms_per_step", "tokens_per_s", "peak_mem_mb", "step_ms")}
    return {
        "schema": 1, "name": name, "config": config,
        "params": {"trainable": row["trainable"], "total": row["total"]},
        "metrics": metrics, "curves": {"step_ms": [[i + 1, ms] for i, ms in enumerate(row["step_ms"])]},
        "timing": {"wall_s": row["wall_s"], "tokens_per_s": row["tokens_per_s"], "peak_mem_mb": row["peak_mem_mb"]},
        "env": row["env"], "task": {}, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def collect(record: dict, out_dir: Path, runs_dir: Path | None = None) -> Path:
    """Write a row as ``runs_dir/<name>/result.json`` (as a run leaves it, when ``runs_dir`` is given) and as
    ``out_dir/<name>.json`` (as ``mora.reproduce`` collects results for the tables); returns the latter."""
    text = json.dumps(record, indent=1) + "\n"
    if runs_dir is not None:
        (runs_dir / record["name"]).mkdir(parents=True, exist_ok=True)
        (runs_dir / record["name"] / "result.json").write_text(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{record['name']}.json"
    path.write_text(text)
    return path


def run_session(specs: list[BenchModel], methods: list[BenchMethod], device: str, out_dir: Path, runs_dir: Path,
                seed: int = 0) -> list[dict]:
    """Measure every (model, method) and write each row as soon as it is measured (:func:`collect`), so that
    a session cut short keeps what it finished; returns the records."""
    started = datetime.now(timezone.utc)
    kind = torch.device(device).type
    session = {"id": f"{kind}-{started:%Y%m%dT%H%M%SZ}", "device_kind": "gpu" if kind == "cuda" else "cpu",
               "load_before": os.getloadavg()[0]}
    records = []
    for spec in specs:
        for method in methods:
            print(f"table5: {spec.name} {method.label} on {device} …", file=sys.stderr, flush=True)
            row = run_isolated(spec, method, device, seed)
            print(f"  {row['ms_per_step']:.1f} ms/step, {row['tokens_per_s']:.0f} tokens/s, "
                  f"peak {row['peak_mem_mb']:.0f} MiB", file=sys.stderr, flush=True)
            record = result_record(spec, method, row, session)
            record["config"]["bench"]["load_after"] = os.getloadavg()[0]
            collect(record, out_dir, runs_dir)
            records.append(record)
    return records


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mora.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table5", help="measure every (model, method) of Table 5, each in a fresh process")
    table.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    table.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None,
                       help="default: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in DEFAULT_MODELS.items()))
    table.add_argument("--methods", nargs="+", default=[m.label for m in METHODS],
                       help="rows, e.g. lora-r8 mora_rope-r8 fft frozen (default: all of Table 5)")
    table.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "runs" / "table5",
                       help="where the collected <name>.json go (default results/runs/table5)")
    table.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs" / "table5",
                       help="where each row's run directory goes (default runs/table5)")
    table.add_argument("--seed", type=int, default=0)
    one = sub.add_parser("measure", help="one (model, method) in this process; prints a JSON line")
    one.add_argument("spec", help="the model: a key of MODELS or a BenchModel as JSON")
    one.add_argument("method", help="a row label, e.g. mora_rope-r8, fft, frozen")
    one.add_argument("--device", default="cpu")
    one.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "measure":
        spec = MODELS[args.spec]() if args.spec in MODELS else BenchModel(**json.loads(args.spec))
        row = measure(spec, BenchMethod.parse(args.method), args.device, args.seed)
        print(json.dumps(row))
        return 0
    try:
        methods = [BenchMethod.parse(label) for label in args.methods]
    except ValueError as error:
        parser.error(str(error))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    models = args.models or DEFAULT_MODELS[torch.device(args.device).type]
    records = run_session([MODELS[key]() for key in models], methods, args.device, args.out, args.runs_dir, args.seed)
    print(f"table5: wrote {len(records)} results to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
