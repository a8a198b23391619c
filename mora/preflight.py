"""Checks that run before a run directory is touched: can the model and the data be had, and does the
method fit the model?

Each failure is a :class:`~mora.config.ConfigError` naming the fix, so ``mora-run`` prints one line and
exits with 2 instead of failing minutes later inside a launched process.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
from .models import hub_offline
from .paths import build_hint

#: files whose presence in the local HF cache means a hub id can be loaded offline
_CACHE_PROBES = ("config.json", "tokenizer_config.json", "tokenizer.json")


def _cached(repo_id: str) -> bool:
    """Does the local HF cache hold ``repo_id`` (what mora.models falls back to when offline)?"""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in _CACHE_PROBES)
    except Exception:  # noqa: BLE001 — not a valid repo id, unreadable cache: not cached
        return False


def check_hub_id(repo_id: str, what: str, fix: str) -> None:
    """Refuse a hub id that cannot be had: offline and not in the local cache, or the hub not answering."""
    if hub_offline():
        if _cached(repo_id):
            return
        raise ConfigError(f"{what} {repo_id!r} is a hub id and this machine is offline (HF_HUB_OFFLINE=1); {fix}")
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, timeout=10)
    except Exception as e:  # noqa: BLE001 — any failure means the same thing here
        raise ConfigError(f"{what} {repo_id!r} cannot be reached on the hub ({type(e).__name__}); {fix}") from None


def _looks_like_path(ref: str) -> bool:
    """The rule of mora.models.locate: these are local paths, never hub ids."""
    return ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1


def check_model(model: DictConfig) -> None:
    """The weights (``source=pretrained``) and tokenizer must be local paths or reachable hub ids."""
    fix = (f"download it on an online machine (python scripts/prefetch.py model={model.name}) "
           "and set model.path=/local/copy")
    refs = []
    if model.source in ("pretrained", "gguf"):
        if not model.path:
            raise ConfigError(f"model.source={model.source} needs model.path (a hub id or a local directory)")
        if model.source == "pretrained":
            refs.append(("model.path", model.path))
    if model.source != "gguf" and model.tokenizer != "char":
        refs.append(("model.tokenizer", model.tokenizer))
    for what, ref in refs:
        if Path(ref).expanduser().exists():
            continue
        if hint := build_hint(ref):
            raise ConfigError(f"{what}={ref!r} is not built yet; build it with `{hint}`")
        if _looks_like_path(ref):
            raise ConfigError(f"{what}={ref!r} does not exist; point {what} at a local directory or a hub id")
        check_hub_id(ref, what, fix)


class _Vocab:
    """Stands in for the tokenizer when only the module layout of a random model is needed."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __len__(self) -> int:
        return 8


def _skeleton(model: DictConfig):
    """The model's modules on the meta device (no memory, no weights read), or None when its layout
    cannot be had cheaply (GGUF files, unreadable configs: loading the model reports those)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import models

    if model.source == "random":
        with torch.device("meta"):
            return models.random_llama(OmegaConf.to_object(model), _Vocab(), torch.float32)
    if model.source != "pretrained":
        return None
    try:
        if Path(model.path).expanduser().is_dir():
            config = AutoConfig.from_pretrained(Path(model.path).expanduser())
        else:
            with models.offline_mode() if hub_offline() else contextlib.nullcontext():
                config = AutoConfig.from_pretrained(model.path, local_files_only=hub_offline())
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001
        return None


def check_method(cfg: DictConfig) -> None:
    """``method.target_modules`` / ``modules_to_save`` must match modules of the model, and a
    ``method.budget_r`` must be reachable — found on a meta-device skeleton, so the mistake is one line now
    rather than a traceback inside training."""
    from . import methods
    from .budget import match_budget

    method = OmegaConf.to_object(cfg.method)
    if method.name == "fft" or (skeleton := _skeleton(cfg.model)) is None:
        return
    try:
        methods.check_targets(skeleton, method)
        if method.budget_r:
            match_budget(skeleton, method)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def preflight(cfg: DictConfig) -> None:
    from tasks import TASKS

    check_model(cfg.model)
    check_method(cfg)
    task, task_cfg = TASKS[cfg.task.name], OmegaConf.to_object(cfg.task)
    task.preflight(task_cfg)
    if hasattr(task, "preflight_tokens"):  # checks that need the run's tokenizer (tasks.sft: the prompt fits max_length)
        from .models import load_tokenizer

        task.preflight_tokens(task_cfg, load_tokenizer(cfg.model))
