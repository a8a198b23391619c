"""The library as other projects install it: ``pip install mora-adapter`` brings torch and safetensors only,
and that is enough to wrap, train, save, load and merge; ``import mora`` never loads the suite's stack.

The wheel test builds a wheel from this working tree, installs it (offline, without the ``suite`` extra)
into a fresh virtual environment that sees nothing but torch and safetensors with their own dependencies
— this environment's copies, linked into one folder that a ``.pth`` file puts on the path — and runs
:data:`ADAPTER_SCRIPT` there.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
#: what the adapter library may not pull in: the reproduction suite's stack (the `suite` extra)
SUITE_MODULES = ("transformers", "peft", "datasets", "accelerate", "deepspeed", "hydra", "omegaconf", "wandb",
                 "lm_eval", "matplotlib")

#: Runs inside the fresh environment: a torch model with LLaMA-style projection names, adapted with MoRA.
ADAPTER_SCRIPT = """
import importlib.util, sys, tempfile
import torch
from torch import nn
from mora import MoraConfig, MoraModel, get_mora_model

missing = [m for m in {suite} if importlib.util.find_spec(m) is not None]
assert not missing, f"the suite's packages are installed: {{missing}}"

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj = nn.Linear(32, 32), nn.Linear(32, 32)
        self.up_proj, self.down_proj = nn.Linear(32, 48), nn.Linear(48, 32)

    def forward(self, x):
        h = x + self.q_proj(x) * torch.sigmoid(self.v_proj(x))
        return h + self.down_proj(torch.relu(self.up_proj(h)))

def base():
    torch.manual_seed(0)
    return Block().double()

x = torch.randn(4, 32, dtype=torch.float64)
config = MoraConfig(r=4, compression="rope", target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], dropout=0.0)
model = get_mora_model(base(), config)
assert torch.equal(model(x), base()(x))                        # M = 0: the base model at step 0
trainable = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(trainable, lr=1e-2)
model(x).square().mean().backward()
optimizer.step()
after = model(x)
assert not torch.allclose(after, base()(x))                    # it trained
with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory)
    loaded = MoraModel.from_pretrained(base(), directory)
torch.testing.assert_close(loaded(x), after, rtol=0, atol=1e-12)
merged = loaded.merge_and_unload()
assert type(merged) is Block
torch.testing.assert_close(merged(x), after, rtol=0, atol=1e-10)
print("wrapped, trained, saved, loaded, merged:", sum(p.numel() for p in trainable), "trained numbers")
"""


def test_import_mora_loads_none_of_the_suite():
    code = ("import sys; from mora import MoraConfig, MoraModel, get_mora_model; "
            f"print(sorted(m for m in {SUITE_MODULES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_library_needs_only_torch_and_safetensors():
    """The installed metadata: the suite is an extra, the core depends on torch and safetensors."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] != "mora"  # taken on PyPI by an unrelated package
    assert sorted(Requirement(r).name for r in project["dependencies"]) == ["safetensors", "torch"]
    suite = {Requirement(r).name for r in project["optional-dependencies"]["suite"]}
    assert {"transformers", "peft", "deepspeed", "lm-eval", "wandb", "hydra-core"} <= suite


def dependency_closure(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that ``requirements`` need, transitively (markers and extras evaluated)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo, seen = [Requirement(r) for r in requirements], set()
    while todo:
        requirement = todo.pop()
        if (key := (requirement.name, frozenset(requirement.extras))) in seen:
            continue
        seen.add(key)
        dist = importlib.metadata.distribution(requirement.name)
        found.setdefault(dist.metadata["Name"].lower().replace("_", "-"), dist)
        for needed in map(Requirement, dist.requires or []):
            extras = requirement.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
                todo.append(needed)
    return list(found.values())


def link_only(dists: list[importlib.metadata.Distribution], folder: Path) -> None:
    """Symlink each distribution's top-level packages, modules and metadata folder into ``folder``."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for dist in dists:
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)


@pytest.mark.slow
def test_wheel_installs_and_works_without_the_suite(tmp_path):
    source = tmp_path / "source"  # a copy, so building leaves no build/ or egg-info in the working tree
    source.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / item, source / item)
    for package in ("mora", "tasks"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist", source],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("mora_adapter-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    link_only(dependency_closure(core), tmp_path / "torch-only")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "torch_only.pth").write_text(f"{tmp_path / 'torch-only'}\n")
    # --no-index: the wheel's requirements must already be met by torch and safetensors, or this fails
    install = subprocess.run([*pip, "--python", python, "install", "-q", "--no-index", wheel], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr

    script = ADAPTER_SCRIPT.format(suite=SUITE_MODULES)
    run = subprocess.run([python, "-c", script], cwd=tmp_path, capture_output=True, text=True)  # not REPO: no ./mora
    assert run.returncode == 0, run.stderr[-3000:]
    assert "wrapped, trained, saved, loaded, merged" in run.stdout
    assert Path(purelib, "mora", "__init__.py").exists()  # imported from the installed wheel
