"""Trainer callbacks: what the run shows (progress), keeps (metrics.jsonl), measures (task evaluation
during training) and does periodically (ReLoRA / ReMoRA restarts).  All of them act on rank 0 only,
except the restarts, which every rank must apply identically."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from .restarts import reset_optimizer_state, reset_zero_state, restart_adapters


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class MetricsLog(TrainerCallback):
    """Appends every log record (training and evaluation) to ``metrics.jsonl`` — the source of truth
    for tables and curves — and prints plain progress lines (step, loss, lr, tokens/s, ETA) when
    stdout is not a terminal (on a terminal, the trainer's progress bar is kept instead)."""

    def __init__(self, path: Path, print_lines: bool):
        self.path, self.print_lines = Path(path), print_lines
        self._last: tuple[float, int] | None = None  # (time, tokens) at the previous training log
        self._start, self._first_step = time.perf_counter(), 0
        self._eval_s = 0.0  # evaluation time since the previous training log: not training throughput

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run repeats the steps after its checkpoint)."""
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self._eval_s += logs.get("eval_s", 0.0)
        if "loss" in logs:
            tokens = int(logs.get("num_input_tokens_seen", state.num_input_tokens_seen or 0))
            if self._last is not None and tokens > self._last[1]:
                record["tokens_per_s"] = (tokens - self._last[1]) / max(now - self._last[0] - self._eval_s, 1e-9)
            self._last, self._eval_s = (now, tokens), 0.0
            record["elapsed_s"] = now - self._start
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.print_lines and ("loss" in record or any(k.startswith("eval/") for k in record)):
            print(self._line(state, record, now), flush=True)

    def _line(self, state, record: dict, now: float) -> str:
        step, total = state.global_step, state.max_steps
        if "loss" not in record:
            metrics = "  ".join(f"{k.removeprefix('eval/')} {v:.4f}" for k, v in record.items() if k.startswith("eval/"))
            return f"step {step:>6}/{total}  eval  {metrics}"
        elapsed = now - self._start
        eta = _eta(elapsed / max(step - self._first_step, 1) * (total - step))
        tps = record.get("tokens_per_s")
        return (
            f"step {step:>6}/{total}  loss {record['loss']:.4f}  lr {record.get('learning_rate', 0):.2e}  "
            + (f"{tps:,.0f} tok/s  " if tps else "")
            + f"ETA {eta}"
        )

    def on_train_begin(self, args, state, control, **kwargs):
        self._start, self._first_step = time.perf_counter(), state.global_step


class NonFiniteLoss(RuntimeError):
    """Raised when the loss becomes NaN or infinite; the last checkpoint on disk is the last good one."""


class TaskEvaluation(TrainerCallback):
    """Evaluates the task (through lm-eval) at the configured steps and logs ``eval/<metric>`` records.

    The steps are the multiples of ``train.eval_every``, the fractions ``train.eval_at`` of training
    (the paper reports UUID accuracy after 300/500/700/900 of 1,000 steps) and the last step.  Rank 0
    evaluates the unwrapped model (adapters active, dropout off); the other ranks wait for it.
    """

    def __init__(self, trainer, task, steps: set[int]):
        self.trainer, self.task, self.steps = trainer, task, steps
        self.last_metrics: dict[str, float] = {}

    @staticmethod
    def schedule(max_steps: int, every: int, fractions: list[float]) -> set[int]:
        steps = {max_steps}
        if every > 0:
            steps |= set(range(every, max_steps + 1, every))
        steps |= {max(1, round(f * max_steps)) for f in fractions}
        return steps

    def on_train_begin(self, args, state, control, **kwargs):
        if _zero_stage(self.trainer) == 3:  # the forward of a sharded model is a collective of every rank
            raise NotImplementedError("task evaluation on rank 0 cannot run a ZeRO-3-sharded model; use launcher=zero2")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self.steps:
            return
        should_log = control.should_log  # Trainer.log() clears it, which would drop this step's loss log
        if state.is_world_process_zero:  # run_lm_eval switches to eval mode and restores modes and RNGs
            started = time.perf_counter()
            self.last_metrics = self.task.evaluate(model)
            seconds = time.perf_counter() - started
            self.trainer.log({**{f"eval/{k}": v for k, v in self.last_metrics.items()}, "eval_s": seconds})
        self.trainer.accelerator.wait_for_everyone()
        control.should_log = should_log
        return control


class AdapterRestarts(TrainerCallback):
    """ReLoRA / ReMoRA: every ``every`` steps fold the adapter into the base weights, re-initialise it
    (ReMoRA also switches the compression) and drop the adapter's optimizer state.  The LR re-warm is
    part of the schedule (:func:`mora.train.lr_lambda`), which knows the restart steps."""

    def __init__(self, trainer, every: int, cycle_compression: bool):
        self.trainer, self.every, self.cycle = trainer, every, cycle_compression

    def on_train_begin(self, args, state, control, **kwargs):
        if _zero_stage(self.trainer) == 3:
            raise NotImplementedError("ReLoRA/ReMoRA restarts run under DDP and ZeRO-1/2, not ZeRO-3; use launcher=zero2")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.every and step % self.every == 0 and step < state.max_steps:
            # Every rank must re-draw LoRA's A identically, and a resumed run the same A as before.
            generator = torch.Generator().manual_seed(args.seed + step)
            params = restart_adapters(model, self.cycle, generator=generator)
            if self.trainer.is_deepspeed_enabled:
                reset_zero_state(self.trainer.deepspeed.optimizer, params)
            else:
                reset_optimizer_state(self.trainer.optimizer, params)


def _zero_stage(trainer) -> int:
    """The DeepSpeed ZeRO stage of a prepared trainer; 0 without DeepSpeed."""
    return trainer.deepspeed.zero_optimization_stage() if trainer.is_deepspeed_enabled else 0


def non_finite_loss(loss: float, step: int, checkpoint: str | None) -> NonFiniteLoss:
    """The error that stops a run whose loss became NaN/inf (on this rank or another)."""
    where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
    return NonFiniteLoss(
        f"loss became non-finite ({loss}) at step {step}; {where}. Lower optim.lr, raise optim.warmup_steps "
        "or use train.precision=fp32 (a changed recipe is a new run: a new name, or force=true to replace "
        "this one); rerunning the same command resumes from that checkpoint."
    )


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
