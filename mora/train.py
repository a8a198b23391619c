"""The one trainer: every task × method of the suite goes through :func:`train`.

It reads the frozen ``runs/<name>/config.yaml`` that ``mora-run`` wrote, so every process of a
distributed launch trains exactly the same recipe.  You normally never call it yourself::

    mora-run task=uuid method=mora method.r=8                         # CPU / 1 GPU, in-process
    mora-run task=uuid launcher=zero2 launcher.num_processes=8         # 8 GPUs, DeepSpeed ZeRO-2
    # what the driver spawns for the line above (run it by hand on each node for multi-node):
    accelerate launch --config_file conf/accelerate/zero2.yaml --num_processes 8 \\
        -m mora.train runs/uuid-mora_rope-r8-lr3e-4-s42/config.yaml

Built on Hugging Face ``Trainer`` (DeepSpeed, gradient accumulation, resume with RNG state and data
position, W&B, progress bar).  What is ours: the per-method optimizer groups and a schedule that knows
the ReLoRA restarts (:class:`MoraTrainer`), checkpoints holding only what trains, a NaN/inf stop, the
callbacks in :mod:`mora.callbacks`, ``result.json`` and ``final/`` (the trained adapter, or for FFT the
model, with its tokenizer: ``MoraModel.from_pretrained(base, "runs/<name>/final")``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from . import analyze, envinfo, methods
from .callbacks import AdapterRestarts, MetricsLog, TaskEvaluation, non_finite_loss, stdout_is_terminal
from .config import grad_accum_steps, validate
from .models import load_model, load_tokenizer
from .restarts import restart_lr_multiplier
from .results import curves_from_metrics, read_metrics_jsonl, write_result

REPO_ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED_CONFIGS = {"zero2": REPO_ROOT / "conf/deepspeed/zero2.json", "zero3": REPO_ROOT / "conf/deepspeed/zero3.json"}


def lr_lambda(step: int, *, total: int, warmup: int, schedule: str, restart_every: int = 0, restart_warmup: int = 0) -> float:
    """LR multiplier at ``step``: linear warmup, then linear/cosine decay to 0 (or constant).

    With ReLoRA/ReMoRA restarts every ``restart_every`` steps the LR is re-warmed for
    ``restart_warmup`` steps back to the value of the base schedule (the "jagged" schedule).
    """
    if step < warmup:
        base = (step + 1) / warmup
    else:
        progress = (step - warmup) / max(1, total - warmup)
        base = {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[schedule]
    if restart_every:
        restarts = list(range(restart_every, total, restart_every))
        base *= restart_lr_multiplier(step, restarts, restart_warmup)
    return max(base, 0.0)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest *complete* ``checkpoint-<step>`` in ``output_dir``: the Trainer writes trainer_state.json
    last, so a run killed while saving leaves a folder without it, and resumes from the one before
    (``transformers.trainer_utils.get_last_checkpoint`` would pick the broken folder)."""
    folders = [d for d in Path(output_dir).glob("checkpoint-*") if d.name.removeprefix("checkpoint-").isdigit()]
    for folder in sorted(folders, key=lambda d: int(d.name.removeprefix("checkpoint-")), reverse=True):
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):  # absent, or cut short by the kill
            continue
        return str(folder)
    return None


class MoraTrainer(Trainer):
    """``Trainer`` with the suite's optimizer groups, schedule, NaN guard and lean checkpoints."""

    def __init__(self, *args, run_cfg: DictConfig, param_groups: list[dict], **kwargs):
        super().__init__(*args, **kwargs)
        self.run_cfg, self.param_groups = run_cfg, param_groups

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            betas = tuple(self.run_cfg.optim.betas)
            self.optimizer = torch.optim.AdamW(self.param_groups, lr=self.run_cfg.optim.lr, betas=betas)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            o, m = self.run_cfg.optim, self.run_cfg.method
            warmup = o.warmup_steps or math.ceil(o.warmup_ratio * num_training_steps)
            fn = lambda step: lr_lambda(  # noqa: E731
                step, total=num_training_steps, warmup=warmup, schedule=o.schedule,
                restart_every=m.restart_every, restart_warmup=m.restart_warmup,
            )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, fn)
        return self.lr_scheduler

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all().float()
        if torch.distributed.is_initialized():  # one rank's NaN stops every rank
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            checkpoint = last_checkpoint(self.args.output_dir)
            raise non_finite_loss(loss.item(), self.state.global_step + 1, checkpoint)
        return loss

    def _save(self, output_dir=None, state_dict=None):
        """Checkpoint only what training changes (every weight for FFT; with ReLoRA/ReMoRA restarts also the
        base weights the updates were folded into); the frozen rest is rebuilt from its source on resume.
        peft models without restarts keep peft's own adapter format."""
        peft_format = isinstance(self.model, methods.PEFT_MODEL_TYPES) and not self.run_cfg.method.restart_every
        if peft_format or not self.args.should_save:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        keep = methods.checkpoint_parameters(self.model, self.run_cfg.method)
        tensors = {name: p.detach().cpu().contiguous() for name, p in keep.items()}
        save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})

    def _issue_warnings_after_load(self, load_result):
        """Resuming from a lean checkpoint (:meth:`_save`): the frozen weights are absent by design, so
        HF's "missing keys" warning (every base weight) is noise; a key that *should* be there and is not,
        or one the model lacks, means the checkpoint does not fit the model: refuse to resume from it."""
        expected = methods.checkpoint_parameters(self.model, self.run_cfg.method)
        missing = [k for k in load_result.missing_keys if k in expected]
        if missing or load_result.unexpected_keys:
            raise RuntimeError(
                f"the checkpoint does not fit the model (missing {missing[:3]}, unexpected "
                f"{list(load_result.unexpected_keys)[:3]}); remove {self.args.output_dir} or pass force=true"
            )


def training_arguments(cfg: DictConfig, run_dir: Path, world_size: int, max_steps: int) -> TrainingArguments:
    t, o, launcher = cfg.train, cfg.optim, cfg.launcher
    wandb = cfg.logger.name == "wandb"
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=grad_accum_steps(t, world_size),
        max_steps=max_steps,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.log_every,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=t.save_limit,
        include_num_input_tokens_seen="non_padding",
        report_to=["wandb"] if wandb else [],
        run_name=run_dir.name,
        disable_tqdm=not stdout_is_terminal(),
        deepspeed=str(DEEPSPEED_CONFIGS[launcher.name]) if launcher.name in DEEPSPEED_CONFIGS else None,
        # Without CUDA, use_cpu is what makes accelerate count the CPU ranks (its MULTI_CPU path, gloo); with
        # use_cpu=False it sees 1 process while DeepSpeed sees them all (mora.run.launch_command).
        ddp_backend=None if torch.cuda.is_available() else ("gloo" if world_size > 1 else None),
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every trainable parameter is used (HF guesses True for non-PreTrainedModels)
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def wandb_run_id(name: str) -> str:
    """The W&B id of run ``name``: the name itself, within W&B's 128 characters (with a hash of the full
    name when cut, so names that differ only at the end keep distinct ids); the same on every resume."""
    run_id = name.replace("=", "_")
    if len(run_id) > 128:
        run_id = f"{run_id[:115]}-{hashlib.sha1(run_id.encode()).hexdigest()[:12]}"
    return run_id


def _start_wandb(cfg: DictConfig, run_dir: Path) -> None:
    """Open this run's W&B run (rank 0), which the Trainer's integration then logs into: offline unless
    WANDB_MODE says otherwise, under ``run_dir/wandb/`` unless WANDB_DIR says otherwise, with a stable id
    so a resumed run re-attaches.  Explicit arguments, not WANDB_* variables: wandb reads those once per
    process, so the second run of a sweep would reuse the first one's id and directory."""
    import wandb

    wandb.init(
        mode=os.environ.get("WANDB_MODE", "offline"),
        dir=os.environ.get("WANDB_DIR") or str(run_dir),
        project=cfg.logger.project,
        entity=cfg.logger.entity or None,
        id=wandb_run_id(run_dir.name),
        name=run_dir.name,
        resume="allow",
        group=cfg.logger.group or cfg.experiment or cfg.task.name,
        job_type=cfg.method.name,
        tags=[cfg.task.name, cfg.method.name, f"r{cfg.method.r}", *cfg.logger.tags],
        config={"run": OmegaConf.to_container(cfg, resolve=True)},  # nested: HF adds TrainingArguments flat (its own "optim")
    )


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate the run described by ``cfg`` in ``run_dir``; returns the result dict
    (also written to ``run_dir/result.json`` by rank 0).  Rerunning resumes from the last checkpoint."""
    from tasks import TASKS  # the registry imports every task module

    started = time.time()
    run_dir = Path(run_dir)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed: no "no GPU found" notice on CPU runs
        if cfg.launcher.cpu_threads:
            torch.set_num_threads(cfg.launcher.cpu_threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tokenizer)
    task = TASKS[cfg.task.name](OmegaConf.to_object(cfg.task), tokenizer, run_dir)
    dataset = task.train_dataset()
    method_cfg = OmegaConf.to_object(cfg.method)
    base_params = sum(p.numel() for p in model.parameters())  # the model's own size, before any adapter
    trainable = methods.build(model, method_cfg, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    if cfg.train.gradient_checkpointing and method_cfg.name != "fft":
        trainable.model.enable_input_require_grads()

    max_steps = cfg.train.max_steps
    if max_steps <= 0:
        max_steps = math.ceil(cfg.train.epochs * len(dataset) / cfg.train.global_batch)
    args = training_arguments(cfg, run_dir, world_size, max_steps)
    trainer = MoraTrainer(
        model=trainable.model, args=args, train_dataset=dataset, data_collator=task.collate,
        run_cfg=cfg, param_groups=trainable.param_groups,
    )
    if cfg.logger.name == "wandb" and trainer.is_world_process_zero():
        _start_wandb(cfg, run_dir)
    log = MetricsLog(run_dir / "metrics.jsonl", print_lines=args.disable_tqdm)
    steps = TaskEvaluation.schedule(max_steps, cfg.train.eval_every, list(cfg.train.eval_at))
    evaluation = TaskEvaluation(trainer, task, steps)
    trainer.remove_callback(PrinterCallback)
    if args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
    for callback in (log, evaluation):
        trainer.add_callback(callback)
    if method_cfg.restart_every:
        trainer.add_callback(AdapterRestarts(trainer, method_cfg.restart_every, method_cfg.cycle_compression))

    checkpoint = last_checkpoint(args.output_dir)
    if checkpoint and trainer.is_world_process_zero():
        resumed_step = json.loads(Path(checkpoint, "trainer_state.json").read_text())["global_step"]
        log.truncate_after(resumed_step)
        print(f"resuming {run_dir.name} from {checkpoint} (step {resumed_step})", flush=True)
    if trainer.is_world_process_zero():
        params = methods.parameter_report(trainable.model)
        print(f"{run_dir.name}: {params['trainable']:,} trainable of {params['total']:,} parameters; "
              f"{max_steps} steps of {cfg.train.global_batch} examples", flush=True)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    if cfg.logger.name == "wandb":  # HF leaves the W&B run open: the next run of a sweep would log into it
        import wandb

        wandb.finish()

    if not trainer.is_world_process_zero():
        return {}
    # The trained adapter (MoRA: MoraModel.from_pretrained; LoRA family: peft) or, for FFT, the whole model.
    trainable.model.save_pretrained(run_dir / "final")
    tokenizer.save_pretrained(run_dir / "final")
    records = read_metrics_jsonl(run_dir / "metrics.jsonl")
    curves = curves_from_metrics(records)
    losses = [r["loss"] for r in records if "loss" in r]
    # a run resumed from its final checkpoint trains and evaluates nothing: its final evaluation is on record
    evaluated = evaluation.last_metrics or (curves["eval"][-1][1] if curves["eval"] else {})
    metrics = {**evaluated, "final_loss": losses[-1] if losses else output.training_loss}
    tokens = trainer.state.num_input_tokens_seen
    timing = {
        "wall_s": time.time() - started,
        "train_s": output.metrics.get("train_runtime"),
        "tokens_per_s": tokens / output.metrics["train_runtime"] if output.metrics.get("train_runtime") else None,
        "tokens_seen": tokens,
        "peak_mem_mb": _peak_memory_mb(),
        "world_size": world_size,
        "grad_accum": args.gradient_accumulation_steps,  # derived: global_batch / (micro_batch × world_size)
    }
    result = write_result(
        run_dir, config=OmegaConf.to_container(cfg, resolve=True), name=run_dir.name,
        params={**methods.parameter_report(trainable.model), "base": base_params}, metrics=metrics, curves=curves, timing=timing,
        env=envinfo.capture(), task=task.report(),
    )
    if cfg.train.analyze:  # the rank of what was learned: runs/<name>/analysis.json, a summary in result.json
        result = analyze.record(run_dir, analyze.analyze_model(trainable.model, cfg))
    return result


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    """``python -m mora.train runs/<name>/config.yaml`` — what every launched process runs."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m mora.train runs/<name>/config.yaml   (written by mora-run)")
    path = Path(argv[0])
    train(validate(OmegaConf.load(path)), path.parent)  # typed again: the task config becomes its dataclass


if __name__ == "__main__":
    main()
