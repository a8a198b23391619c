"""``MoraModel`` — inject MoRA into any model's ``nn.Linear`` modules; merge, save and load it.

The API mirrors peft's (``get_peft_model``, ``print_trainable_parameters``, ``merge_and_unload``,
``save_pretrained`` / ``from_pretrained``) without registering with peft, whose method registry only
accepts its own names.  Attributes the wrapper does not have (``generate``, ``config``, …) are looked
up on the wrapped model, so a ``MoraModel`` stands in for the Hugging Face model in training and
evaluation code.

Saved layout (``save_pretrained(d)``)::

    d/adapter_config.json        the MoraConfig (compression as a word, r, targets, …)
    d/adapter_model.safetensors  every M (key "<module path>.M") and the modules_to_save weights
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import MoraConfig
from .layer import MoraLinear

WEIGHTS_NAME = "adapter_model.safetensors"


def module_matches(name: str, patterns: list[str] | str) -> bool:
    """peft's matching rule: a regex string must match the whole path; a list entry matches its end."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def find_modules(model: nn.Module, patterns: list[str] | str, *, what: str) -> dict[str, nn.Module]:
    """The modules of ``model`` matched by ``patterns``; a clear error when nothing matches."""
    found = {name: m for name, m in model.named_modules() if name and module_matches(name, patterns)}
    if not found:
        linear = Counter(name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear))
        raise ValueError(
            f"{what}={patterns!r} matched no module of {type(model).__name__}; "
            f"its nn.Linear modules end in: {', '.join(sorted(linear)) or 'none'}"
        )
    return found


class MoraModel(nn.Module):
    """A model whose targeted ``nn.Linear`` modules carry MoRA adapters; everything else is frozen.

    Build it with :func:`get_mora_model` (or ``MoraModel(model, config)``); the wrapped model is
    ``self.base_model`` and is modified in place.
    """

    def __init__(self, model: nn.Module, config: MoraConfig):
        super().__init__()
        self.base_model = model
        self.mora_config = config
        # Validate every match before touching the model, so a bad config leaves it unchanged.
        targets = find_modules(model, config.target_modules, what="target_modules")
        for name, module in targets.items():
            if not isinstance(module, nn.Linear):
                raise TypeError(f"target_modules matched {name} ({type(module).__name__}); MoRA adapts nn.Linear only")
        if config.modules_to_save:
            find_modules(model, config.modules_to_save, what="modules_to_save")
        model.requires_grad_(False)
        for name, module in targets.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, MoraLinear(module, config.r, config.compression, config.dropout))
        if config.modules_to_save:
            for module in find_modules(model, config.modules_to_save, what="modules_to_save").values():
                module.requires_grad_(True)
        self.training = model.training  # report the model's mode (each MoraLinear inherits its Linear's)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base_model, name)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    # ------------------------------------------------------------------ inspection
    def mora_layers(self) -> dict[str, MoraLinear]:
        return {n: m for n, m in self.base_model.named_modules() if isinstance(m, MoraLinear)}

    def rank_summary(self) -> dict[str, int]:
        """r̂ per layer shape, e.g. ``{"4096x4096": 256, "4096x11008": 348}`` (in × out)."""
        return {f"{m.in_features}x{m.out_features}": m.rank for m in self.mora_layers().values()}

    def parameter_counts(self) -> dict[str, int]:
        """Trainable and total parameters, and what LoRA of the same r on the same layers would train."""
        params = list(self.base_model.parameters())
        layers = self.mora_layers().values()
        trainable = sum(p.numel() for p in params if p.requires_grad)
        fully_trained = trainable - sum(m.M.numel() for m in layers)  # modules_to_save
        return {
            "trainable": trainable,
            "total": sum(p.numel() for p in params),
            "lora_equivalent": sum(m.r * (m.in_features + m.out_features) for m in layers) + fully_trained,
        }

    def print_trainable_parameters(self) -> None:
        c = self.parameter_counts()
        shapes = ", ".join(f"{shape}→r̂={rank}" for shape, rank in self.rank_summary().items())
        print(
            f"trainable params: {c['trainable']:,} || all params: {c['total']:,} || "
            f"trainable%: {100 * c['trainable'] / c['total']:.4f} || LoRA r={self.mora_config.r} on the same "
            f"layers: {c['lora_equivalent']:,} ({c['trainable'] / c['lora_equivalent']:.4f}×) || {shapes}"
        )

    # ------------------------------------------------------------------ merging
    def merge(self) -> None:
        for layer in self.mora_layers().values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.mora_layers().values():
            layer.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """Merge every adapter and put the plain ``nn.Linear`` modules back; returns the bare model."""
        for name, layer in self.mora_layers().items():
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(self.base_model.get_submodule(parent_name), child, layer.base_layer)
        return self.base_model

    @contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Run the base model exactly: adapters skipped (merged ones are unmerged, then restored)."""
        layers = list(self.mora_layers().values())
        merged = [layer.merged for layer in layers]
        for layer in layers:
            layer.unmerge()
            layer.disabled = True
        try:
            yield
        finally:
            for layer, was_merged in zip(layers, merged):
                layer.disabled = False
                if was_merged:
                    layer.merge()

    # ------------------------------------------------------------------ persistence
    def _saved_parameters(self) -> dict[str, nn.Parameter]:
        """What ``save_pretrained`` writes: every M and the parameters of ``modules_to_save``."""
        saved = {f"{n}.M": layer.M for n, layer in self.mora_layers().items()}
        if self.mora_config.modules_to_save:
            for name, module in find_modules(self.base_model, self.mora_config.modules_to_save, what="modules_to_save").items():
                saved.update({f"{name}.{p}": t for p, t in module.named_parameters()})
        return saved

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the config and the trained tensors (not the frozen base) to ``directory``."""
        if any(layer.merged for layer in self.mora_layers().values()):
            raise RuntimeError("unmerge() before save_pretrained: a merged adapter's M is already in the weights")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.mora_config.save(directory)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self._saved_parameters().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "adapter_type": "mora"})

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path) -> MoraModel:
        """Wrap ``model`` (the same base it was trained on) with the adapter saved in ``directory``."""
        config = MoraConfig.load(directory)
        mora = cls(model, config)
        tensors = load_file(str(Path(directory) / WEIGHTS_NAME))
        expected = mora._saved_parameters()
        if missing := sorted(set(expected) - set(tensors)):
            raise ValueError(f"{directory} lacks {len(missing)} adapter tensors, e.g. {missing[:3]}; wrong base model?")
        if unexpected := sorted(set(tensors) - set(expected)):
            raise ValueError(f"{directory} has tensors this model has no place for, e.g. {unexpected[:3]}")
        with torch.no_grad():
            for key, param in expected.items():
                if tensors[key].shape != param.shape:
                    raise ValueError(f"{key}: saved shape {tuple(tensors[key].shape)} ≠ model's {tuple(param.shape)}")
                param.copy_(tensors[key])
        return mora


def get_mora_model(model: nn.Module, config: MoraConfig) -> MoraModel:
    """Freeze ``model`` and attach MoRA adapters to the modules ``config.target_modules`` names."""
    return MoraModel(model, config)
