"""lm-eval glue: evaluate an in-memory model on YAML tasks, offline, with its adapter active.

Every task of the suite evaluates through :func:`run_lm_eval`::

    from mora.evaluate import run_lm_eval
    out = run_lm_eval(model, tokenizer, ["uuid_memorisation"], include_path="tasks/uuid",
                      metadata={"data_file": "runs/<name>/uuid_eval.jsonl"})
    out["metrics"]["uuid_memorisation"]["char_acc"]

``model`` is a ``transformers.PreTrainedModel``, a peft ``PeftModel`` or a ``mora.MoraModel`` (a plain
module that forwards ``config`` / ``device`` / ``generate`` to the model it wraps).  lm-eval's ``HFLM``
takes all three as they are: nothing is merged or unwrapped, so the adapter is evaluated exactly as it
trains (for peft and MoRA alike).  The model's train/eval mode and the global RNG states (python,
numpy, torch) are restored afterwards, so periodic evaluation inside a training loop does not perturb
dropout or data order.

Why not ``lm_eval.simple_evaluate``: it does three things per call that a training loop evaluating
every few hundred steps does not want — it re-seeds the global RNGs, collects the environment
(``torch.utils.collect_env``, ≈1 s of subprocesses) and asks git for commit hashes.  This module calls
``lm_eval.evaluator.evaluate`` — the function ``simple_evaluate`` delegates to — after applying the
same per-task overrides ``simple_evaluate`` applies (``gen_kwargs``, ``num_fewshot`` default 0, the
few-shot seed).  Environment capture is the run's job (``mora.envinfo``), once per run.  The
``TaskManager`` of an include path is built once and reused (``include_defaults=False``: lm-eval's own
≈15k-task index is never built).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache, partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: lm-eval's defaults in ``simple_evaluate`` (random, numpy, torch, few-shot sampler).
LM_EVAL_SEEDS = (0, 1234, 1234, 1234)

#: Warnings lm-eval emits on every call in our (intended) usage; dropped so real warnings stand out.
_EXPECTED_WARNINGS = (
    "Passed an already-initialized model through `pretrained`",
    "`pretrained` model kwarg is not of type `str`",  # we pass an in-memory model on purpose
    "Custom kwargs can be passed to `--metadata`",  # we do pass them (``metadata=``)
)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _EXPECTED_WARNINGS)


def quiet_lm_eval(level: int = logging.WARNING) -> None:
    """Keep lm-eval's console output to real warnings (its INFO lines and per-call notices off)."""
    logging.getLogger("lm_eval").setLevel(level)
    for name in ("lm_eval.models.huggingface", "lm_eval.api.task"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropExpected) for f in logger.filters):
            logger.addFilter(_DropExpected())


def lm_eval_version() -> str:
    return version("lm_eval")


@lru_cache(maxsize=16)
def _task_manager(include_paths: tuple[str, ...], metadata_json: str):
    from lm_eval.tasks import TaskManager

    metadata = json.loads(metadata_json) or None
    return TaskManager(include_path=list(include_paths), include_defaults=False, metadata=metadata)


def task_manager(include_path: str | Path | list[str | Path], metadata: Mapping[str, Any] | None = None):
    """The (cached) lm-eval ``TaskManager`` over ``include_path`` only; ``metadata`` reaches every task's
    config and is passed as keyword arguments to a YAML's ``custom_dataset`` function (lm-eval's
    ``--metadata``)."""
    paths = include_path if isinstance(include_path, (list, tuple)) else [include_path]
    resolved = tuple(str(Path(p).resolve()) for p in paths)
    for p in resolved:
        if not Path(p).exists():
            raise FileNotFoundError(f"lm-eval include_path {p} does not exist")
    return _task_manager(resolved, json.dumps(dict(metadata or {}), sort_keys=True))


@contextmanager
def _request_bars_off(enabled: bool) -> Iterator[None]:
    """lm-eval draws a progress bar while building each task's requests and offers no switch for it;
    swap the ``tqdm`` its task module uses for a disabled one for the duration of the call."""
    import lm_eval.api.task as task_module

    original = task_module.tqdm
    if not enabled:
        task_module.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = original


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s train/eval mode (module by module) and the python/numpy/torch RNG states."""
    modes = [(m, m.training) for m in model.modules()]
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            for module, training in modes:
                module.training = training


@lru_cache(maxsize=1)
def _hflm_class():
    """lm-eval's ``HFLM`` with its per-call progress bars off unless ``progress`` is set (built lazily:
    importing lm-eval costs seconds, and ``import tasks`` must not pay it)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        progress = False

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or not self.progress)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not self.progress)

    return QuietHFLM


def _make_lm(model: nn.Module, tokenizer: Any, batch_size: int, progress: bool):
    # HFLM takes the model as it is (PreTrainedModel, PeftModel, or MoraModel via its __getattr__): it
    # reads .config/.device, calls .eval()/.tie_weights(), forward and .generate — the adapter runs.
    # No add_bos_token: HFLM then tokenizes prompts with the tokenizer's defaults (add_special_tokens),
    # i.e. exactly as tasks tokenize their training prompts (bos from the post-processor).
    lm = _hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm.progress = progress
    return lm


def _flatten_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"task": {"char_acc,none": x, "char_acc_stderr,none": "N/A", "alias": ...}}`` →
    ``{"task": {"char_acc": x}}``.  The ``,none`` filter suffix is dropped; other filters keep theirs
    (``exact_match,strict-match``).  Standard errors are kept when computed (``bootstrap_iters > 0``)."""
    flat: dict[str, dict[str, float]] = {}
    for task, entries in results.items():
        metrics = {}
        for key, value in entries.items():
            if key in ("alias", "samples", "sample_len") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name, _, filt = key.partition(",")
            metrics[name if filt in ("", "none") else key] = float(value)
        flat[task] = metrics
    return flat


def run_lm_eval(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str | dict],
    include_path: str | Path | list[str | Path],
    *,
    num_fewshot: int | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    gen_kwargs: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    bootstrap_iters: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the in-memory ``model`` on lm-eval ``tasks`` found under ``include_path``.

    Args:
        model: a transformers causal LM, a peft model or a ``MoraModel``; evaluated with its adapters
            active and never merged.  Its train/eval mode is restored afterwards.
        tokenizer: the tokenizer the model was trained with (an HF tokenizer instance).
        tasks: lm-eval task names (or inline task dicts) defined by YAMLs under ``include_path``.
        include_path: the directory (or directories) of the task YAMLs; nothing else is indexed.
        num_fewshot: overrides the YAMLs' ``num_fewshot`` (except where a YAML pins 0); None: the YAML's,
            or 0 when the YAML gives none.
        batch_size: examples per forward/generate call.
        limit: evaluate the first ``limit`` documents of each task only.
        gen_kwargs: generation settings merged over the YAMLs' ``generation_kwargs`` (e.g.
            ``{"max_gen_toks": 40}``).
        metadata: passed to every task config and, as keyword arguments, to a YAML's
            ``custom_dataset`` function — how a task learns run-time paths (lm-eval's ``--metadata``).
        bootstrap_iters: lm-eval's stderr bootstrap iterations (0: no standard errors, fastest).
        progress: show lm-eval's progress bars.

    Returns:
        ``{"metrics": {task: {metric: value}}, "lm_eval_version", "num_fewshot": {task: n},
        "batch_size", "limit", "n_samples": {task: documents evaluated}, "gen_kwargs"}`` — the harness version, few-shot counts and batch size are
        recorded with every result.
    """
    from lm_eval.evaluator import evaluate

    quiet_lm_eval()
    manager = task_manager(include_path, metadata)
    with preserved_state(model):
        random.seed(LM_EVAL_SEEDS[0])
        np.random.seed(LM_EVAL_SEEDS[1])
        torch.manual_seed(LM_EVAL_SEEDS[2])
        lm = _make_lm(model, tokenizer, batch_size, progress)  # puts the model in eval mode
        task_dict = manager.load(list(tasks))
        fewshot: dict[str, int] = {}
        for name, task in task_dict["tasks"].items():
            # the overrides simple_evaluate applies, in the same way
            if gen_kwargs and task.get_config("output_type") == "generate_until":
                task.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
            if num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=LM_EVAL_SEEDS[3])
            fewshot[name] = int(task.get_config("num_fewshot"))
        with torch.no_grad(), _request_bars_off(progress):
            results = evaluate(
                lm=lm,
                task_dict=task_dict,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=False,
                cache_requests=False,
                write_out=False,
            )
    if results is None:  # not rank 0 of a distributed lm-eval run
        return {}
    return {
        "metrics": _flatten_metrics(results["results"]),
        "lm_eval_version": lm_eval_version(),
        "num_fewshot": fewshot,
        "batch_size": batch_size,
        "limit": limit,
        "n_samples": {task: int(n["effective"]) for task, n in results.get("n-samples", {}).items()},
        "gen_kwargs": dict(gen_kwargs) if gen_kwargs else None,
    }


__all__ = ["lm_eval_version", "quiet_lm_eval", "run_lm_eval", "task_manager"]
