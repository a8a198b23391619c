"""``MoraConfig`` — what a MoRA adapter is, and how big its square matrix gets.

MoRA (Jiang et al., 2024, arXiv 2405.12130) replaces LoRA's ``B A`` (d × r and r × k, trained from
A random / B zero) by one square matrix ``M`` (r̂ × r̂, zero-initialised) placed between two
parameter-free operators, ``Δh = f_decomp(M f_comp(x))``.  For the same number of trained numbers as
LoRA of rank r, r̂² ≈ r (k + d), so r̂ ≫ r and the update ΔW can be high-rank.  There is no alpha:
the update is added with scale 1.

Example — the paper's small-rank setting on LLaMA::

    MoraConfig(r=8, compression="rope")          # r̂ = 256 on q_proj (4096²), 348 on up/down_proj
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .compression import COMPRESSIONS

#: The seven LLaMA projections the paper adapts (attention and MLP).
LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

CONFIG_NAME = "adapter_config.json"


def square_rank(in_features: int, out_features: int, r: int, compression: str) -> int:
    """The side r̂ of M that matches LoRA-r's budget r·(k + d) on a k → d layer.

    ``r̂ = int(sqrt((k + d) · r) + 0.5)`` — the official code rounds half up (the paper's text writes a
    floor) — then rounded down to an even number for ``rope``, whose rotation works on pairs.

    >>> square_rank(4096, 4096, 8, "rope"), square_rank(4096, 11008, 8, "sharing")
    (256, 348)
    """
    _check_rank(r)
    _check_compression(compression)
    rank = int(math.sqrt((in_features + out_features) * r) + 0.5)
    if COMPRESSIONS[compression].needs_even_rank:
        rank = rank // 2 * 2
    if rank < 1:
        raise ValueError(f"r={r} gives r̂={rank} on a {in_features}→{out_features} layer; raise r")
    return rank


def _check_rank(r: object) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"MoRA rank r must be a positive integer (the LoRA rank to match), got {r!r}")


def _check_compression(name: object) -> None:
    if not isinstance(name, str) or name not in COMPRESSIONS:
        raise ValueError(
            f"unknown MoRA compression {name!r}; use one of {sorted(COMPRESSIONS)} "
            "(names, not the official code's integers: 1→'sharing', 6→'rope')"
        )


@dataclass
class MoraConfig:
    """Configuration of a MoRA adapter.

    Args:
        r: the LoRA rank whose parameter budget M matches; r̂ is derived per layer by
            :func:`square_rank`.  The paper uses r=8 with ``rope`` and r=256 with ``sharing``.
        compression: how inputs are squeezed into M and outputs spread back — ``rope`` (rotation,
            block-diagonal, high rank: the paper's choice at small r), ``sharing`` (grouped sums, rank ≤
            r̂: its choice at large r), ``decouple`` and ``truncation`` (ablations), and the variants ReMoRA
            cycles through, ``sharing_contiguous``, ``sharing_contiguous_in``, ``sharing_contiguous_out``.
            See :mod:`mora.adapters.compression`.
        target_modules: which ``nn.Linear`` modules get an adapter — a list of names matched against the
            end of each module's dotted path (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``),
            or one string read as a regular expression that must match the whole path.
        dropout: dropout on the adapter's input (official default 0.05); 0 makes training deterministic.
        modules_to_save: modules trained in full beside the adapters (same matching rules), e.g.
            ``["embed_tokens", "norm", "lm_head"]`` for the paper's pretraining runs; saved with the adapter.
    """

    r: int = 8
    compression: str = "rope"
    target_modules: list[str] | str = field(default_factory=lambda: list(LLAMA_TARGET_MODULES))
    dropout: float = 0.05
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_rank(self.r)
        _check_compression(self.compression)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MoRA dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if not self.target_modules:
            raise ValueError("MoraConfig.target_modules is empty; name the nn.Linear modules to adapt")

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps({"adapter_type": "mora", **asdict(self)}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> MoraConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}; is it a MoRA adapter directory?")
        data = json.loads(path.read_text())
        if data.pop("adapter_type", None) != "mora":
            raise ValueError(f"{path} does not describe a MoRA adapter")
        return cls(**data)
