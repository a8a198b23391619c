"""Checks that run before a run directory is touched: can the model and the data be had?

Each failure is a :class:`~mora.config.ConfigError` naming the fix, so ``mora-run`` prints one line and
exits with 2 instead of failing minutes later inside a launched process.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def check_hub_id(repo_id: str, what: str, fix: str) -> None:
    """Refuse a hub id that cannot be reached: offline mode, or the hub not answering within seconds."""
    if hub_offline():
        raise ConfigError(f"{what} {repo_id!r} is a hub id and this machine is offline (HF_HUB_OFFLINE=1); {fix}")
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, timeout=10)
    except Exception as e:  # noqa: BLE001 — any failure means the same thing here
        raise ConfigError(f"{what} {repo_id!r} cannot be reached on the hub ({type(e).__name__}); {fix}") from None


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
        if not Path(ref).exists():
            check_hub_id(ref, what, fix)


def preflight(cfg: DictConfig) -> None:
    from tasks import TASKS

    check_model(cfg.model)
    TASKS[cfg.task.name].preflight(OmegaConf.to_object(cfg.task))
