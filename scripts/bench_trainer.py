"""The trainer's own cost: tokens/s of ``mora.train.train`` against a bare PyTorch loop, in one run.

    .venv/bin/python scripts/bench_trainer.py                                   # task=uuid model=tiny_llama
    .venv/bin/python scripts/bench_trainer.py task=pretrain model=pocket_llama method=lora
    .venv/bin/python scripts/bench_trainer.py --record results/runs/table5      # also a row of Table 5

The arguments are ``mora-run`` overrides: the run is composed and validated exactly as ``mora-run`` does it
and trained by the real trainer (HF ``Trainer``, callbacks, metrics log) in a temporary runs directory.  The
bare loop trains the same thing by hand: the same model and seed, the method attached by
``mora.methods.build``, the task's own ``train_dataset()`` and ``collate`` (so any task works), the same
micro batch, gradient accumulation, AdamW groups, gradient clipping and precision — and nothing else.

Both are timed over the same window: from the first training log (``train.log_every`` steps, warm-up
excluded) to the last step, counting non-padding input tokens as the trainer does; the trainer's time
excludes its evaluations (``metrics.jsonl``'s ``tokens_per_s``).  The bare loop runs before and after the
trainer and its mean is the reference.  Defaults below leave out evaluations during training and
checkpoints (the bare loop has neither); override them to include their cost.  Target (issue 7): ≥ 0.9.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from itertools import cycle
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from mora import envinfo, methods  # noqa: E402
from mora.bench import collect, synchronize  # noqa: E402
from mora.config import grad_accum_steps, validate  # noqa: E402
from mora.models import load_model, load_tokenizer  # noqa: E402
from mora.reproduce import compose_run  # noqa: E402
from mora.results import read_metrics_jsonl  # noqa: E402
from mora.train import train  # noqa: E402

TARGET = 0.9
#: overrides applied unless given: 100 steps, a log every 10, no evaluation or checkpoint mid-training
DEFAULTS = {"task": "uuid", "model": "tiny_llama", "train.max_steps": "100", "train.log_every": "10",
            "train.eval_every": "0", "train.eval_at": "[]", "train.save_every": "1000", "train.analyze": "false",
            "logger": "none"}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def overrides_with_defaults(overrides: list[str]) -> list[str]:
    given = {o.lstrip("+~").partition("=")[0] for o in overrides}
    return [f"{k}={v}" for k, v in DEFAULTS.items() if k not in given] + overrides


def trainer_tokens_per_s(records: list[dict]) -> float:
    """Non-padding tokens per second between the trainer's first and last training logs, evaluation excluded."""
    logs = [r for r in records if "loss" in r]
    if len(logs) < 2:
        raise ValueError("fewer than two training logs: raise train.max_steps or lower train.log_every")
    tokens = sum(b["num_input_tokens_seen"] - a["num_input_tokens_seen"] for a, b in zip(logs, logs[1:]))
    seconds = sum((b["num_input_tokens_seen"] - a["num_input_tokens_seen"]) / b["tokens_per_s"]
                  for a, b in zip(logs, logs[1:]))
    return tokens / seconds


def bare_tokens_per_s(cfg, workdir: Path) -> float:
    """The same training by hand; non-padding tokens per second after the first ``log_every`` steps."""
    from transformers import set_seed

    from tasks import TASKS

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and cfg.launcher.cpu_threads:
        torch.set_num_threads(cfg.launcher.cpu_threads)
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tokenizer)
    task = TASKS[cfg.task.name](OmegaConf.to_object(cfg.task), tokenizer, workdir)
    trainable = methods.build(model, OmegaConf.to_object(cfg.method), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    model = trainable.model.to(device).train()
    params = [p for group in trainable.param_groups for p in group["params"]]
    optimizer = torch.optim.AdamW(trainable.param_groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    loader = torch.utils.data.DataLoader(task.train_dataset(), batch_size=cfg.train.micro_batch, shuffle=True,
                                         collate_fn=task.collate)
    batches = cycle(loader)
    accum = grad_accum_steps(cfg.train, 1)
    precision = AUTOCAST.get(cfg.train.precision)
    autocast = torch.autocast(device, dtype=precision) if precision else contextlib.nullcontext()
    tokens, start = 0, None
    for step in range(1, cfg.train.max_steps + 1):
        for _ in range(accum):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            with autocast:
                loss = model(**batch).loss / accum
            loss.backward()
            if start is not None:
                mask = batch.get("attention_mask")
                tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == cfg.train.log_every:  # the trainer's window starts at its first training log
            synchronize(device)
            start = time.perf_counter()
    synchronize(device)
    return tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="mora-run overrides, e.g. task=uuid model=tiny_llama method=lora")
    parser.add_argument("--record", type=Path, default=None,
                        help="also write the result as a Table 5 row into this directory (e.g. results/runs/table5)")
    args = parser.parse_args(argv)
    overrides = overrides_with_defaults(args.overrides)
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="bench_trainer-") as tmp:
        cfg = validate(compose_run([*overrides, f"runs_dir={tmp}"]))
        bare = [bare_tokens_per_s(cfg, Path(tmp) / "bare-before")]
        wall = time.time()
        train(cfg, Path(tmp) / "trainer")
        wall = time.time() - wall
        trainer = trainer_tokens_per_s(read_metrics_jsonl(Path(tmp) / "trainer" / "metrics.jsonl"))
        bare.append(bare_tokens_per_s(cfg, Path(tmp) / "bare-after"))
    ratio = trainer / statistics.mean(bare)
    print(f"{' '.join(overrides)}\n  trainer {trainer:,.0f} tokens/s; bare loop {bare[0]:,.0f} before, {bare[1]:,.0f} after; "
          f"trainer / bare = {ratio:.3f} (target ≥ {TARGET}: {'PASS' if ratio >= TARGET else 'MISS'})")
    if args.record:
        kind = "gpu" if torch.cuda.is_available() else "cpu"
        method = OmegaConf.to_object(cfg.method)
        config = OmegaConf.to_container(cfg, resolve=True)
        config["bench"] = {"kind": "trainer", "id": f"{kind}-{started:%Y%m%dT%H%M%SZ}", "device_kind": kind,
                           "overrides": overrides, "target": TARGET}
        record = {
            "schema": 1, "name": f"table5-{kind}-trainer-{cfg.task.name}-{cfg.model.name}-{method.label}",
            "config": config, "params": {}, "curves": {},
            "metrics": {"trainer_tokens_per_s": trainer, "bare_tokens_per_s": bare, "ratio": ratio},
            "timing": {"wall_s": wall, "tokens_per_s": trainer}, "env": envinfo.capture(), "task": {},
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        path = collect(record, args.record)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
