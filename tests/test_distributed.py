"""Distributed launches: one tiny UUID recipe trained by 1 process and by 2 CPU processes (DDP, ZeRO-2) gives the
same loss curve, and the launch commands for GPUs and several machines are what accelerate / torchrun / the
deepspeed launcher expect.

The slow tests run ``mora-run`` end to end in subprocesses: 6 runs of ≈10-30 s on 2 cores, ≈1m45 in all; the
first ZeRO run also JIT-builds DeepSpeed's shm comm op once (≈60-80 s, cached in ``TORCH_EXTENSIONS_DIR``).  The
recipe — global batch 8, micro batch 4 — runs as 2 accumulation steps in 1 process and as 1 step on each of 2
processes, and 16 pairs make every step's half-batches differ, so a wrong data split or a wrong accumulation
changes the curve.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mora.adapters import COMPRESSIONS, MoraConfig, get_mora_model
from mora.config import ConfigError, validate
from mora.run import CONF_DIR, launch, launch_command

MORA_RUN = Path(sys.executable).with_name("mora-run")
STEPS = 6
RECIPE = [
    "task=uuid", "task.num_pairs=16", "train.global_batch=8", "train.micro_batch=4", f"train.max_steps={STEPS}",
    "train.log_every=1", "train.eval_every=0", "train.eval_at=[]", "train.save_every=100", "launcher.cpu_threads=1",
    "method.dropout=0", "optim.lr=1e-2", "optim.warmup_steps=0",  # a high LR without warmup: the loss moves
]
#: Measured here: DDP reproduces the 1-process curve bit for bit (2 ranks ↔ 2 accumulation micro-steps: the
#: cross-rank gradient sum is one float32 addition, and addition commutes); ZeRO-2 too for the loss, while its
#: grad norm, summed from per-partition norms in another order, differs by 1-2 ulp (≤8e-8 relative).  Bugs are
#: far off: no derived accumulation (global batch 16) moves the step-1 loss by 8e-4 and later ones by up to 1e-2;
#: ReMoRA restarts that miss ZeRO's fp32 master copy move the step-4 loss by 3e-3.  rtol 1e-5 leaves 100× room
#: for float32 reduction-order noise and still catches those.
RTOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: method=... and its overrides; ReMoRA restarts (fold M into W, zero it, switch compression) every 2 steps
METHODS = {
    "mora": ["method=mora"],
    "remora": ["method=remora", "method.restart_every=2", "method.restart_warmup=1"],
    "lora": ["method=lora"],
}


class Runs:
    """Each (method, launcher, runner) trained once per test module, in its own runs_dir."""

    def __init__(self, root: Path):
        self.root, self.done = root, {}

    def get(self, method: str, launcher: str = "local", runner: str = "auto") -> Path:
        key = (method, launcher, runner)
        if key not in self.done:
            runs_dir = self.root / "-".join(key)
            extra = [] if launcher == "local" else [
                f"launcher={launcher}", "launcher.num_processes=2", f"launcher.runner={runner}",
                f"launcher.main_process_port={free_port()}",
            ]
            command = [str(MORA_RUN), *RECIPE, *METHODS[method], f"runs_dir={runs_dir}", *extra]
            proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{' '.join(command)} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
            (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
            self.done[key] = run_dir
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("distributed"))


def curve(run_dir: Path, key: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if "loss" in r]


# ============================================================================ end to end (subprocesses)
@pytest.mark.slow
@pytest.mark.parametrize(
    "method, launcher, runner",
    [
        ("mora", "ddp", "auto"),  # accelerate → torchrun, DDP over gloo
        ("remora", "zero2", "deepspeed"),  # the deepspeed launcher; restarts must reach ZeRO's fp32 master copy
        ("lora", "zero2", "auto"),  # accelerate + DeepSpeed with 2 CPU ranks; a peft model
    ],
)
def test_two_processes_train_the_one_process_curve(runs, method, launcher, runner):
    local, dist = runs.get(method), runs.get(method, launcher, runner)
    for key in ("loss", "grad_norm"):
        expected, got = curve(local, key), curve(dist, key)
        assert len(got) == STEPS
        print(f"{method} {key}\n  local          {expected}\n  {launcher}/{runner:<9} {got}")
        assert got == pytest.approx(expected, rel=RTOL), key
    # rank 0 alone writes: one record per step, one evaluation, one result
    records = [json.loads(line) for line in (dist / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if "eval/exact_match" in r] == [STEPS]
    assert list(dist.parent.rglob("result.json")) == [dist / "result.json"]
    one, two = (json.loads((d / "result.json").read_text())["timing"] for d in (local, dist))
    assert (one["world_size"], one["grad_accum"]) == (1, 2)
    assert (two["world_size"], two["grad_accum"]) == (2, 1)
    checkpoint = dist / "checkpoints" / f"checkpoint-{STEPS}"  # the Trainer saves the last step
    assert (checkpoint / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")).exists()
    if launcher == "zero2":
        assert (checkpoint / f"global_step{STEPS}").is_dir()  # DeepSpeed's engine and sharded optimizer state


# ============================================================================ launch commands (not run)
def launcher_cfg(**launcher):
    return validate({"task": {"name": "uuid"}, "launcher": launcher})


def flags(command: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(command, command[1:]) if a.startswith("--") and not b.startswith("--")}


MULTI_NODE = dict(num_processes=8, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29555)
CONFIG = Path("/runs/x/config.yaml")


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_accelerate_command_on_one_of_several_machines(name):
    command = launch_command(launcher_cfg(name=name, runner="accelerate", **MULTI_NODE), CONFIG)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[-3:] == ["-m", "mora.train", str(CONFIG)]
    assert flags(command) == {
        "--config_file": str(CONF_DIR / "accelerate" / f"{name}.yaml"),
        "--num_processes": "16",  # accelerate counts every machine's processes
        "--num_machines": "2", "--machine_rank": "1", "--main_process_ip": "10.0.0.1", "--main_process_port": "29555",
    }


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_accelerate_accepts_our_deepspeed_configs(name):
    """accelerate's own argument checks (no launch): no ``mixed_precision`` next to a ``deepspeed_config_file``
    (it refuses that pair in every rank), and each node starts its own ranks (not pdsh from node 0)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    command = launch_command(launcher_cfg(name=name, runner="accelerate", **MULTI_NODE), CONFIG)
    args, _, mixed_precision_from_config = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    assert args.use_deepspeed and not mixed_precision_from_config
    assert args.deepspeed_multinode_launcher == "standard"
    assert (args.num_processes, args.num_machines, args.machine_rank) == (16, 2, 1)


def test_auto_runner_is_accelerate_without_a_hostfile():
    command = launch_command(launcher_cfg(name="zero2", num_processes=2), CONFIG)
    assert command[2] == "accelerate.commands.launch"


def test_torchrun_command_on_one_of_several_machines():
    command = launch_command(launcher_cfg(name="ddp", runner="torchrun", **MULTI_NODE), CONFIG)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert flags(command) == {
        "--nproc_per_node": "8", "--nnodes": "2", "--node_rank": "1", "--master_addr": "10.0.0.1",
        "--master_port": "29555",
    }


def test_deepspeed_command_with_a_hostfile():
    """The hostfile's hosts and slots are the world; the runner (auto picks it) reaches the hosts over ssh."""
    command = launch_command(launcher_cfg(name="zero2", hostfile="scripts/hostfile.example", num_machines=2), CONFIG)
    assert command[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert flags(command) == {"--hostfile": "scripts/hostfile.example", "--master_port": "29500", "--module": "mora.train"}
    assert command[-4:] == ["--no_local_rank", "--module", "mora.train", str(CONFIG)]  # mora.train takes 1 argument


def test_deepspeed_command_on_this_machine():
    command = launch_command(launcher_cfg(name="zero2", runner="deepspeed", num_processes=2), CONFIG)
    assert flags(command) == {
        "--num_gpus": "2", "--master_addr": "127.0.0.1", "--master_port": "29500", "--module": "mora.train",
    }


def test_deepspeed_runner_on_several_machines_needs_a_hostfile():
    with pytest.raises(ConfigError, match="hostfile"):
        launch_command(launcher_cfg(name="zero2", runner="deepspeed", **MULTI_NODE), CONFIG)


def test_force_on_several_machines_is_refused(tmp_path, capsys):
    """Every machine runs the same mora-run line: with force=true each would wipe the run directory."""
    raw = OmegaConf.create({"task": {"name": "uuid"}, "launcher": {"name": "zero2", **MULTI_NODE}, "force": True,
                            "runs_dir": str(tmp_path)})
    with pytest.raises(SystemExit) as exit_:
        launch(raw, [])
    assert exit_.value.code == 2 and "force=true on several machines" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_module_apply_reaches_every_module_of_a_mora_model(tiny_llama, compression):
    """DeepSpeed and HF call ``model.apply(fn)``; a compression operator once shadowed it with its own ``apply``."""
    model = get_mora_model(tiny_llama, MoraConfig(r=8, compression=compression))
    seen = []
    model.apply(seen.append)
    assert len(seen) == len(list(model.modules()))
