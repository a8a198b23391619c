"""The typed schema of a run: what every YAML under ``conf/`` must fit.

Hydra composes ``conf/config.yaml`` with one file from each group (``model/ method/ task/ launcher/
logger/`` and optionally ``experiment/``); :func:`validate` then merges the result onto these
dataclasses, so an unknown key, a wrong type or an impossible value fails with one line *before any
work starts*.  Task options differ per task, so ``task`` is validated against the dataclass its
``name`` selects (:data:`tasks.TASK_CONFIGS`).

The frozen, resolved file ``runs/<name>/config.yaml`` is what training processes read (every rank the
same file; Hydra runs only in the driver).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .methods import MethodConfig
from .paths import cache_path


_POCKET = object()  # by_scale's third value when the YAML gives none


def _by_scale(pocket: Any, paper: Any, gpu: Any = _POCKET, *, _root_: DictConfig) -> Any:
    """``${by_scale:48,10000}`` — the first value at ``scale=pocket``, the second at ``scale=paper``; at
    ``scale=gpu`` (one GPU, minutes) a third value, ``${by_scale:48,10000,512}``, or else the pocket value —
    a table's grid (``conf/grids/<table>.yaml`` ``scales: gpu:``) overrides what differs from pocket."""
    scale = _root_.get("scale")
    if scale == "paper":
        return paper
    return gpu if scale == "gpu" and gpu is not _POCKET else pocket


OmegaConf.register_new_resolver("by_scale", _by_scale, replace=True)
# ``${cache:tokenizers/pocket-bpe-4k}`` — an absolute path in the cache of built artefacts (mora.paths)
OmegaConf.register_new_resolver("cache", lambda sub: str(cache_path(sub)), replace=True)


class ConfigError(ValueError):
    """A configuration mistake the user can fix; the driver prints it as one line and exits with 2."""


@dataclass
class ModelConfig:
    """Which causal LM to start from.

    ``source``: ``random`` builds a LLaMA from the size fields below (random init, as the paper's
    pretraining runs and the embedded ``tiny_llama``); ``pretrained`` loads ``path`` (a hub id or a
    local directory) with ``from_pretrained``; ``gguf`` loads the GGUF file ``gguf_file`` found in
    ``path`` (a local directory or an installed Python package name).
    """

    name: str = "tiny_llama"
    source: str = "random"
    path: str | None = None
    gguf_file: str | None = None
    tokenizer: str = "char"  # "char" (the bundled character tokenizer) or a hub id / local directory
    dtype: str = "float32"  # float32 | bfloat16 | float16 — the dtype of the frozen weights
    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = False


@dataclass
class OptimConfig:
    """AdamW and its schedule (the paper: AdamW, weight decay 0, grad clip 1.0)."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "linear"  # linear | cosine | constant — decay after warmup
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    """How long and how batched.  ``global_batch`` is the recipe; the accumulation steps are derived:
    global_batch = micro_batch × grad_accum × world_size, so 1 CPU and 16 GPUs train the same thing."""

    global_batch: int = 32
    micro_batch: int = 32
    max_steps: int = -1  # > 0 wins over epochs
    epochs: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    seed: int = 42
    log_every: int = 10
    save_every: int = 100  # checkpoint period in steps (a killed run resumes from the last one)
    save_limit: int = 2
    eval_every: int = 0  # evaluate the task every N steps for the curve (0: only at eval_at and the end)
    eval_at: list[float] = field(default_factory=list)  # fractions of training, e.g. [0.3, 0.5, 0.7, 0.9]
    analyze: bool = True  # at the end, the spectra and ranks of every ΔW (mora.analyze): analysis.json + result.json


@dataclass
class LauncherConfig:
    """Where the training processes run.  ``local``: in the driver's process.  ``ddp`` / ``zero2``:
    spawned by ``runner`` (``auto``: accelerate on GPUs and CPU alike; the deepspeed launcher when
    ``hostfile`` is set).  ``zero3`` trains but cannot evaluate yet (rank 0 cannot run a sharded model)."""

    name: str = "local"  # local | ddp | zero2 | zero3
    runner: str = "auto"  # auto | accelerate | deepspeed | torchrun
    num_processes: int = 1  # per machine
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = "127.0.0.1"
    main_process_port: int = 29500
    hostfile: str | None = None  # deepspeed runner: a hostfile for multi-node
    cpu_threads: int = 0  # torch threads per process on CPU (0: torch's default); tiny models run as fast on 1


@dataclass
class LoggerConfig:
    """``none``: only ``runs/<name>/metrics.jsonl``.  ``wandb``: also W&B, offline unless WANDB_MODE says
    otherwise; rank 0 only; a stable id per run so a resumed run re-attaches."""

    name: str = "none"  # none | wandb
    project: str = "mora"
    entity: str | None = None
    group: str | None = None  # default: the experiment (e.g. table1) or the task
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """The whole run.  ``task`` is a dict here; it is validated against the task's own dataclass."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    task: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment: str | None = None  # set by conf/experiment/*.yaml; names the W&B group and the table
    scale: str = "pocket"  # pocket | gpu | paper — experiments pick their sizes from it
    runs_dir: str = "runs"
    name: str | None = None  # override the derived run name
    force: bool = False  # rerun even when runs/<name>/result.json exists (wipes the run dir)


def register_schema() -> None:
    """Make :class:`RunConfig` the base of ``conf/config.yaml`` (its ``run_schema`` default), so Hydra
    accepts overrides of every schema key and rejects unknown ones while composing.  Each task's own
    dataclass is stored as ``task_schema/<name>``, which its YAML names as a default
    (``- /task_schema@task: pretrain``), so every task option can be overridden from the command line too."""
    from hydra.core.config_store import ConfigStore

    from tasks import TASK_CONFIGS

    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for name, schema in TASK_CONFIGS.items():
        store.store(group="task_schema", name=name, node=schema)


_CHOICES = {
    "model.source": ("random", "pretrained", "gguf"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "optim.schedule": ("linear", "cosine", "constant"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "launcher.name": ("local", "ddp", "zero2", "zero3"),
    "launcher.runner": ("auto", "accelerate", "deepspeed", "torchrun"),
    "logger.name": ("none", "wandb"),
    "scale": ("pocket", "gpu", "paper"),
}


def validate(raw: DictConfig | dict) -> DictConfig:
    """Merge ``raw`` onto the schema; return a typed, resolved config or raise :class:`ConfigError`."""
    from tasks import TASK_CONFIGS  # tasks depend on mora, not the reverse, at import time

    raw = OmegaConf.create(OmegaConf.to_container(raw, resolve=True)) if not isinstance(raw, dict) else OmegaConf.create(raw)
    task = raw.pop("task", None)
    if not task or "name" not in task:
        raise ConfigError("no task selected: add task=<name> (one of: " + ", ".join(sorted(TASK_CONFIGS)) + ")")
    if task.name not in TASK_CONFIGS:
        raise ConfigError(f"unknown task {task.name!r}; choose task= one of {sorted(TASK_CONFIGS)}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), raw)
        cfg.task = OmegaConf.merge(OmegaConf.structured(TASK_CONFIGS[task.name]), task)
        OmegaConf.to_object(cfg.method)  # runs MethodConfig.__post_init__ checks
        OmegaConf.to_object(cfg.task)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
    t = cfg.train
    for key in ("train.global_batch", "train.micro_batch", "train.log_every", "train.save_every", "optim.lr"):
        if not OmegaConf.select(cfg, key) > 0:
            raise ConfigError(f"{key} must be positive, got {OmegaConf.select(cfg, key)}")
    if t.global_batch % t.micro_batch:
        raise ConfigError(f"train.global_batch={t.global_batch} is not a multiple of train.micro_batch={t.micro_batch}")
    if t.save_every % t.log_every:  # HF restarts the loss average at the checkpoint
        raise ConfigError(
            f"train.save_every={t.save_every} is not a multiple of train.log_every={t.log_every}: a resumed run "
            "would log a loss averaged over fewer steps than the uninterrupted run; make it a multiple"
        )
    if cfg.launcher.name == "local" and (cfg.launcher.num_processes > 1 or cfg.launcher.num_machines > 1):
        raise ConfigError("launcher=local runs one process; use launcher=ddp|zero2|zero3 for more")
    return cfg


def _one_line(error: OmegaConfBaseException) -> str:
    """OmegaConf's message without its multi-line context dump."""
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None)
    return f"config key {key!r}: {message}" if key else message


def grad_accum_steps(train: TrainConfig | DictConfig, world_size: int) -> int:
    """global_batch / (micro_batch × world_size), refusing recipes that do not divide evenly."""
    per_step = train.micro_batch * world_size
    if train.global_batch % per_step:
        raise ConfigError(
            f"train.global_batch={train.global_batch} is not divisible by micro_batch×world_size={per_step}; "
            "change train.micro_batch or the number of processes"
        )
    return train.global_batch // per_step
