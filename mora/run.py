"""``mora-run`` — compose a run with Hydra, name it, freeze its config, then train it here or launch it.

    mora-run                                              # the embedded default: UUID, MoRA, tiny LLaMA, CPU
    mora-run task=uuid method=lora method.r=8 optim.lr=2e-4
    mora-run -m method=lora,mora method.r=8,64 optim.lr=1e-4,3e-4      # a sweep: one run per point
    mora-run experiment=table1 scale=paper launcher=zero2 launcher.num_processes=8

Each run lives in ``runs/<name>/`` with a name derived from what defines it, e.g.
``uuid-mora_rope-r8-lr3e-4-s42`` (+ any other override, e.g. ``-max_steps=200``).  The driver writes the
resolved config there (``config.yaml``, the only thing launched processes read: Hydra and multi-process
launchers do not mix), then either trains in this process (``launcher=local``) or spawns
``accelerate launch`` / ``torchrun`` / ``deepspeed`` running ``python -m mora.train runs/<name>/config.yaml``.

Rerunning a command resumes the run from its last checkpoint; a finished run (``result.json``) is
skipped unless ``force=true``.  Bad input — an unknown group option, a bad value, a run directory that
holds a different config — is one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, register_schema, validate

register_schema()

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
GROUPS = ("model", "method", "task", "launcher", "logger", "experiment")

#: overrides that are already spelled out by the core of the name, or that do not change the recipe
_NAMED = {"task", "method", "method.name", "method.r", "method.compression", "method.peft_type", "method.budget_r",
          "optim.lr", "train.seed"}
#: characters of override values that make awkward directory names: "/" and "," become "_", the rest go
_UNSAFE = str.maketrans({"/": "_", ",": "_", "[": None, "]": None, "'": None, '"': None, " ": None})
_NOT_RECIPE = ("launcher", "logger", "force", "name", "runs_dir", "experiment", "hydra")


def fail(message: str, code: int = 2) -> None:
    print(f"mora-run: error: {' '.join(str(message).split())}", file=sys.stderr)  # one line, whatever raised it
    sys.exit(code)


def check_group_choices(args: list[str]) -> None:
    """Refuse ``group=option`` arguments whose option has no YAML, naming those that exist."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or value in ("null", ""):
            continue
        available = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        for option in value.split(","):
            if option not in available:
                fail(f"unknown {key} {option!r}; choose {key}= one of {available}")


def short_float(x: float) -> str:
    """3e-4 / 1.5e-4 rather than 0.0003 or 3e-04 in run names."""
    mantissa, _, exponent = f"{x:.2e}".partition("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """``<task>-<method label>-<size>-lr<lr>-s<seed>`` plus every other recipe override as ``key=value``;
    the size is ``r<r>``, ``b<budget_r>`` with a budget, absent for fft and peft types (``MethodConfig.size``)."""
    method = OmegaConf.to_object(cfg.method)
    parts = [cfg.task.name, method.label, *([method.size] if method.size else [])]
    parts += [f"lr{short_float(cfg.optim.lr)}", f"s{cfg.train.seed}"]
    for override in sorted(overrides):
        key, _, value = override.lstrip("+~").partition("=")
        if key in _NAMED or key.startswith(_NOT_RECIPE):
            continue
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}".translate(_UNSAFE))
    return "-".join(parts)


def _recipe(cfg: DictConfig) -> dict:
    """The part of a config that defines the result (not where or how loudly it runs)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in data.items() if k not in ("launcher", "logger", "force", "name", "runs_dir")}


def prepare_run_dir(run_dir: Path, cfg: DictConfig) -> str:
    """Make ``run_dir`` ready: ``"new"``, ``"resume"`` (same config, unfinished) or ``"done"``."""
    config_file = run_dir / "config.yaml"
    if config_file.exists() and not cfg.force:
        stored = _recipe(OmegaConf.load(config_file))
        if stored != _recipe(cfg):
            changed = _diff(stored, _recipe(cfg))
            raise ConfigError(
                f"{run_dir} holds a run with a different config (differs in {', '.join(changed[:5])}); "
                "choose another name=..., runs_dir=..., or pass force=true to replace it"
            )
        if (run_dir / "result.json").exists():
            return "done"
        save_config(cfg, config_file)  # launcher settings may change between attempts
        return "resume"
    if cfg.force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, config_file)
    return "new"


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write ``config.yaml`` atomically: on several machines every driver writes the same recipe (only
    ``launcher.machine_rank`` differs) to the shared run directory while launched ranks may be reading it."""
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    OmegaConf.save(cfg, tmp)
    tmp.replace(path)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def launch_command(cfg: DictConfig, config_file: Path) -> list[str]:
    """The command that starts this machine's processes of a distributed run (every machine runs its own,
    with its ``launcher.machine_rank``), or, for the deepspeed runner with a hostfile, every host's.

    ``runner=auto`` is accelerate (``conf/accelerate/<launcher>.yaml``), on GPUs and on CPU alike, unless a
    hostfile is given.  accelerate + DeepSpeed with ≥2 CPU processes once failed here with "train_batch_size
    is not equal to micro_batch_per_gpu * gradient_acc_step * world_size" because each rank's accelerate
    ``PartialState`` was built with ``cpu=False``: with no CUDA its ``_prepare_backend`` finds no backend
    (None), DeepSpeed's ``init_distributed`` (``ACCELERATE_USE_DEEPSPEED=true``) still forms the 2-rank group,
    and then ``backend is None`` sets ``num_processes = 1``, so HF computes the DeepSpeed batch for a world of
    1 while DeepSpeed checks it against 2.  :func:`mora.train.training_arguments` passes ``use_cpu=True`` (and
    gloo) without CUDA, which takes accelerate's MULTI_CPU path: it counts every rank.
    """
    launcher = cfg.launcher
    runner = launcher.runner
    if runner == "auto":
        runner = "deepspeed" if launcher.hostfile else "accelerate"
    n, nodes = str(launcher.num_processes), str(launcher.num_machines)
    ip, port, rank = launcher.main_process_ip, str(launcher.main_process_port), str(launcher.machine_rank)
    target = ["-m", "mora.train", str(config_file)]
    if runner == "accelerate":
        return [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONF_DIR / "accelerate" / f"{launcher.name}.yaml"),
            "--num_processes", str(launcher.num_processes * launcher.num_machines), "--num_machines", nodes,
            "--machine_rank", rank, "--main_process_ip", ip, "--main_process_port", port, *target,
        ]
    if runner == "torchrun":
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", n, "--nnodes", nodes,
            "--node_rank", rank, "--master_addr", ip, "--master_port", port, *target,
        ]
    # deepspeed: started once.  With a hostfile, its hosts and slots are the world: the runner reaches the other
    # hosts over ssh (pdsh) and the first host is the master.  --no_local_rank: mora.train takes only the config
    # path (ranks read LOCAL_RANK from the environment).
    if launcher.hostfile:
        where = ["--hostfile", launcher.hostfile]
    elif launcher.num_machines > 1:
        raise ConfigError("launcher.runner=deepspeed on several machines needs launcher.hostfile=... "
                          "(scripts/hostfile.example), or use runner=accelerate with launcher.machine_rank on every machine")
    else:
        where = ["--num_gpus", n, "--master_addr", ip]
    return [sys.executable, "-m", "deepspeed.launcher.runner", *where, "--master_port", port, "--no_local_rank",
            "--module", "mora.train", str(config_file)]


def launch(raw: DictConfig, overrides: list[str]) -> dict | None:
    """Validate, name and prepare one run, then train it (or launch its processes)."""
    from .callbacks import NonFiniteLoss
    from .preflight import preflight

    try:
        cfg = validate(raw)
        run_dir = Path(cfg.runs_dir) / (cfg.name or run_name(cfg, overrides))
        preflight(cfg)
        if cfg.force and cfg.launcher.num_machines > 1:
            raise ConfigError("force=true on several machines would let each one wipe the run directory while the "
                              "others use it: delete it once, then launch without force")
        # launched processes start in REPO_ROOT (conf/accelerate/*.yaml name conf/deepspeed/*.json from there)
        command = None if cfg.launcher.name == "local" else launch_command(cfg, (run_dir / "config.yaml").resolve())
        state = prepare_run_dir(run_dir, cfg)
    except ConfigError as e:
        fail(str(e))
    if state == "done":
        print(f"{run_dir.name}: already finished ({run_dir / 'result.json'}); force=true reruns it", flush=True)
        return None
    if command is None:
        from .train import train

        try:
            return train(cfg, run_dir)
        except NonFiniteLoss as e:
            fail(str(e), code=1)
    env = dict(os.environ)
    if not torch.cuda.is_available():  # ranks share this machine's cores: one BLAS thread pool each, no oversubscription
        env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // cfg.launcher.num_processes)))
    print("launching:", " ".join(command), flush=True)
    if (code := subprocess.run(command, cwd=REPO_ROOT, env=env).returncode) != 0:
        fail(f"the launched run exited with code {code}; see the output above", code=code)
    return None


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(raw: DictConfig) -> None:
    launch(raw, list(HydraConfig.get().overrides.task))


def main() -> None:
    check_group_choices(sys.argv[1:])
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing a multi-line report
    try:
        _hydra_main()
    except HydraException as e:
        cause = str(e.__cause__).splitlines()[0] if e.__cause__ else ""
        fail(" ".join(f"{str(e).splitlines()[0]} {cause}".split()))


if __name__ == "__main__":
    main()
