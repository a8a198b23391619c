"""``mora-run``, the driver: bad input is one line and exit 2 with nothing written, run names, run
directories (new / resume / done / a different config), every config in ``conf/`` composing and
validating offline, and sweeps (one directory per point, finished points skipped, ``force=true``).

Most tests call the driver in-process (``mora.run.main`` with a patched ``sys.argv``: Hydra, validation
and preflight take well under a second); the ``slow`` ones run the real ``mora-run`` in a subprocess
(~10 s of imports each), to check what a user sees on stderr and a real sweep.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import mora.run
from mora.config import ConfigError, validate
from mora.reproduce import compose_run
from mora.run import CONF_DIR, REPO_ROOT, check_group_choices, prepare_run_dir, run_name, short_float
from tasks import TASKS

MORA_RUN = str(Path(sys.executable).parent / "mora-run")
#: the cheapest real run: 8 pairs, one batch per step, evaluation only at the end
TINY = [
    "task.num_pairs=8", "train.global_batch=8", "train.micro_batch=8", "train.eval_every=0", "train.eval_at=[]",
    "train.log_every=1", "train.save_every=2", "method.dropout=0", "launcher.cpu_threads=1",
]
GROUPS = ("model", "method", "task", "launcher", "logger", "experiment")


def offline_env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
            "TOKENIZERS_PARALLELISM": "false", **extra}


def snapshot(root: Path) -> dict | None:
    """Every file under ``root`` with its bytes and mtime (None: ``root`` does not exist)."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``mora-run *args`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["mora-run", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # main() sets it; restore it afterwards
    code = 0
    try:
        mora.run.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (validation and preflight must stay offline)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# ================================================================================ bad input
BAD_INPUT = [
    (["task=nope"], ["unknown task 'nope'", "uuid"]),
    (["method=nope"], ["unknown method 'nope'", "mora"]),
    (["model=nope"], ["unknown model 'nope'", "tiny_llama"]),
    (["-m", "method=lora,nope"], ["unknown method 'nope'"]),
    (["method.r=0"], ["method.r", "got 0"]),
    (["method.r=-3"], ["method.r", "got -3"]),
    (["optim.lr=abc"], ["optim.lr", "abc"]),
    (["optim.foo=1"], ["foo", "OptimConfig"]),
    (["+train.bogus=1"], ["bogus", "TrainConfig"]),
    (["method.compression=nope"], ["compression", "'nope'", "rope"]),
    (["method.target_modules=[nope]"], ["method.target_modules", "nope", "q_proj"]),
    (["method=lora", "method.modules_to_save=[nope]"], ["method.modules_to_save", "nope"]),
    (["model.num_heads=3"], ["model.num_heads=3"]),
    (["model.source=pretrained", "model.path=/nonexistent/dir"], ["model.path", "/nonexistent/dir"]),
    (["model=llama2_7b"], ["meta-llama/Llama-2-7b-hf", "model.path", "offline"]),
    (["model.dtype=float8"], ["model.dtype", "float8"]),
    (["train.global_batch=10", "train.micro_batch=4"], ["train.global_batch=10", "train.micro_batch=4"]),
    (["train.micro_batch=0"], ["train.micro_batch", "positive"]),
    (["optim.lr=-1"], ["optim.lr", "positive"]),
    (["train.log_every=3", "train.save_every=10"], ["train.save_every=10", "train.log_every=3"]),
    (["launcher.num_processes=2"], ["launcher=local"]),
    (["method=fft", "method.restart_every=10"], ["restart"]),
    (["task.loss_on=keys"], ["loss_on", "keys"]),
]


@pytest.mark.parametrize("args, expected", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path, no_network, args, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runs = tmp_path / "runs"
    code, out, err = run_main(monkeypatch, capsys, f"runs_dir={runs}", *args)
    lines = error_lines(err)
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("mora-run: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not runs.exists(), sorted(runs.rglob("*"))
    assert list(tmp_path.iterdir()) == []


def test_hub_id_cached_locally_passes_preflight_offline(monkeypatch, tmp_path):
    """Offline, a hub id the local HF cache holds is what mora.models loads: preflight must not refuse it."""
    import huggingface_hub

    from mora.preflight import check_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = validate(compose_run(["model=llama2_7b"])).model
    with pytest.raises(ConfigError, match="offline"):
        check_model(model)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f, **kw: str(tmp_path / f))
    check_model(model)


def test_target_modules_checked_against_a_local_pretrained_config(tmp_path, make_llama):
    """model.source=pretrained with a local directory: the skeleton comes from its config.json (meta device)."""
    from mora.preflight import check_method

    make_llama().save_pretrained(tmp_path / "llama")
    cfg = validate(compose_run(["model.source=pretrained", f"model.path={tmp_path / 'llama'}"]))
    check_method(cfg)  # the LLaMA projections exist
    bad = validate(compose_run(["model.source=pretrained", f"model.path={tmp_path / 'llama'}",
                                "method.target_modules=[query]"]))
    with pytest.raises(ConfigError, match="query.*q_proj"):
        check_method(bad)


@pytest.mark.slow
def test_bad_input_stderr_is_one_line_in_a_real_process(tmp_path):
    """What a user sees: one stderr line, exit 2, nothing written — for a Hydra error (unknown key), a
    validation error and a preflight error (the model skeleton, which imports transformers): no warnings
    or tracebacks around it."""
    runs = tmp_path / "runs"
    cases = [
        (["optim.foo=1"], "foo"),
        (["method.r=-3"], "method.r"),
        (["method.target_modules=[nope]"], "target_modules"),
    ]
    for args, expected in cases:
        proc = subprocess.run([MORA_RUN, f"runs_dir={runs}", *args], cwd=REPO_ROOT, env=offline_env(),
                              capture_output=True, text=True, timeout=300)
        lines = error_lines(proc.stderr)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("mora-run: error: ") and expected in lines[0], (args, proc.stderr)
        assert proc.stdout.strip() == "", proc.stdout
        assert not runs.exists()


# ================================================================================ run directories
def _cfg(tmp_path: Path, *overrides: str):
    return validate(compose_run([f"runs_dir={tmp_path}", *overrides]))


def test_prepare_run_dir_new_resume_done(tmp_path):
    run_dir = tmp_path / "r"
    cfg = _cfg(tmp_path)
    assert prepare_run_dir(run_dir, cfg) == "new"
    assert OmegaConf.load(run_dir / "config.yaml") == cfg
    assert prepare_run_dir(run_dir, cfg) == "resume"
    # where and how the run is launched and logged is not the recipe: still the same run
    moved = _cfg(tmp_path / "elsewhere", "launcher=ddp", "logger=wandb", "launcher.cpu_threads=1")
    assert prepare_run_dir(run_dir, moved) == "resume"
    assert OmegaConf.load(run_dir / "config.yaml").launcher.name == "ddp"  # the next attempt's launch settings
    (run_dir / "result.json").write_text("{}")
    assert prepare_run_dir(run_dir, cfg) == "done"


def test_prepare_run_dir_force_replaces(tmp_path):
    run_dir = tmp_path / "r"
    prepare_run_dir(run_dir, _cfg(tmp_path))
    (run_dir / "result.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    assert prepare_run_dir(run_dir, _cfg(tmp_path, "force=true", "optim.lr=1e-3")) == "new"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    assert OmegaConf.load(run_dir / "config.yaml").optim.lr == 1e-3


def test_prepare_run_dir_refuses_a_different_config(tmp_path):
    run_dir = tmp_path / "r"
    prepare_run_dir(run_dir, _cfg(tmp_path))
    before = snapshot(run_dir)
    with pytest.raises(ConfigError) as info:
        prepare_run_dir(run_dir, _cfg(tmp_path, "optim.lr=1e-3", "method.r=4"))
    message = str(info.value)
    assert "optim.lr" in message and "method.r" in message and "\n" not in message
    assert snapshot(run_dir) == before


def test_rerun_with_a_different_config_exits_2_and_touches_nothing(monkeypatch, capsys, tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "x"
    prepare_run_dir(run_dir, _cfg(runs, "name=x", *TINY))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 4.6}\n')
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    before = snapshot(runs)
    code, out, err = run_main(monkeypatch, capsys, f"runs_dir={runs}", "name=x", *TINY, "optim.lr=1e-3")
    lines = error_lines(err)
    assert code == 2, (out, err)
    assert len(lines) == 1 and "optim.lr" in lines[0] and str(run_dir) in lines[0], err
    assert "force=true" in lines[0]
    assert snapshot(runs) == before


# ================================================================================ run names
@pytest.mark.parametrize("x, text", [(3e-4, "3e-4"), (1.5e-4, "1.5e-4"), (2e-5, "2e-5"), (0.0003, "3e-4"),
                                     (1e-3, "1e-3"), (1.25e-4, "1.25e-4"), (0.1, "1e-1"), (2.0, "2e0")])
def test_short_float(x, text):
    assert short_float(x) == text


def _name(*overrides: str) -> str:
    overrides = list(overrides)
    return run_name(validate(compose_run(overrides)), overrides)


def test_default_run_name():
    assert _name() == "uuid-mora_rope-r8-lr3e-4-s42"
    assert _name() == _name()  # deterministic


def test_run_name_spells_the_core_and_appends_other_overrides():
    assert _name("method=lora", "method.r=16", "optim.lr=1.5e-4", "train.seed=1") == "uuid-lora-r16-lr1.5e-4-s1"
    assert _name("method.compression=sharing") == "uuid-mora_sharing-r8-lr3e-4-s42"
    assert _name("method=fft", "optim.lr=2e-5") == "uuid-fft-lr2e-5-s42"  # fft has no rank
    assert _name("method=remora", "method.restart_every=100") == "uuid-remora-r8-lr3e-4-s42-restart_every=100"
    assert _name("train.max_steps=200") == "uuid-mora_rope-r8-lr3e-4-s42-max_steps=200"
    # the same overrides in another order: the same name
    assert _name("train.max_steps=200", "task.num_pairs=8") == _name("task.num_pairs=8", "train.max_steps=200")


def test_run_name_ignores_where_and_how_a_run_is_launched_or_logged(tmp_path):
    base = _name()
    for extra in (["launcher=ddp", "launcher.num_processes=4"], ["launcher=zero2", "launcher.main_process_port=1234"],
                  ["logger=wandb", "logger.project=x", "logger.tags=[a,b]"], ["launcher.cpu_threads=1"],
                  [f"runs_dir={tmp_path}", "force=true"]):
        assert _name(*extra) == base, extra


def test_run_names_differ_when_the_recipe_differs():
    recipes = [[], ["method=lora"], ["method=dora"], ["method=lora_plus"], ["method=asylora"], ["method=fft"],
               ["method=relora"], ["method=remora"], ["method.r=16"], ["optim.lr=1e-3"], ["train.seed=0"],
               ["method.compression=sharing"], ["train.max_steps=100"], ["train.max_steps=200"],
               ["task.num_pairs=8"], ["method.dropout=0"], ["model=llama_250m"], ["optim.schedule=cosine"],
               ["method.target_modules=[q_proj,v_proj]"], ["method.target_modules=[q_proj]"]]
    names = [_name(*r) for r in recipes]
    assert len(set(names)) == len(names), names


# ================================================================================ configs
def _options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", _options(), ids=[f"{g}={o}" for g, o in _options()])
def test_every_group_option_composes_and_validates_offline(no_network, group, option):
    overrides = [f"{group}={option}"]
    cfg = validate(compose_run(overrides))
    # the default task, the one chosen, or the one an experiment selects: always a registered task
    expected = option if group == "task" else cfg.task.name if group == "experiment" else "uuid"
    assert cfg.task.name == expected and cfg.task.name in TASKS
    assert run_name(cfg, overrides)
    if group in ("model", "method", "launcher", "logger"):
        assert cfg[group].name == OmegaConf.load(CONF_DIR / group / f"{option}.yaml").name


@pytest.mark.parametrize("scale", ["pocket", "paper"])
def test_experiment_table1_at_both_scales(no_network, scale):
    cfg = validate(compose_run(["experiment=table1", f"scale={scale}", "model=llama2_7b", "launcher=zero2"]))
    assert cfg.experiment == "table1" and cfg.train.max_steps == 1000
    assert (cfg.task.num_pairs == 10000) == (scale == "paper")  # ${by_scale:...} resolved


def test_every_yaml_in_conf_opens_with_a_command():
    commands = ("mora-run", "python ", "make ", "accelerate ", "deepspeed ", "torchrun ")
    files = sorted(CONF_DIR.rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        lines = path.read_text().splitlines()
        first = lines[1] if lines[0].strip() == "# @package _global_" else lines[0]
        assert first.startswith("#"), f"{path.relative_to(REPO_ROOT)}: first line is not a comment"
        assert any(c in first for c in commands), f"{path.relative_to(REPO_ROOT)}: {first!r} gives no command"


def test_check_group_choices_accepts_the_existing_options():
    check_group_choices(["method=lora,mora", "model=tiny_llama", "experiment=null", "optim.lr=1", "-m"])
    with pytest.raises(SystemExit) as info:
        check_group_choices(["launcher=slurm"])
    assert info.value.code == 2


# ================================================================================ sweeps
@pytest.mark.slow
def test_sweep_runs_each_point_once_then_skips_and_force_reruns(tmp_path):
    runs = tmp_path / "runs"
    command = [MORA_RUN, "-m", "method=lora,mora", f"runs_dir={runs}", "train.max_steps=2", *TINY]
    first = subprocess.run(command, cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    dirs = sorted(p.name for p in runs.iterdir() if p.is_dir())  # beside them: Hydra's multirun.yaml
    assert len(dirs) == 2 and dirs[0].startswith("uuid-lora-r8-") and dirs[1].startswith("uuid-mora_rope-r8-"), dirs
    assert dirs[0].removeprefix("uuid-lora") == dirs[1].removeprefix("uuid-mora_rope")  # same recipe otherwise
    results = {d: json.loads((runs / d / "result.json").read_text()) for d in dirs}
    assert {r["config"]["method"]["name"] for r in results.values()} == {"lora", "mora"}
    stamps = {d: (runs / d / "result.json").stat().st_mtime_ns for d in dirs}

    second = subprocess.run(command, cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already finished") == 2, second.stdout
    assert {d: (runs / d / "result.json").stat().st_mtime_ns for d in dirs} == stamps

    forced = subprocess.run([MORA_RUN, "method=lora", *command[3:], "force=true"], cwd=REPO_ROOT,
                            env=offline_env(), capture_output=True, text=True, timeout=600)
    assert forced.returncode == 0, forced.stderr
    assert "already finished" not in forced.stdout
    assert (runs / dirs[0] / "result.json").stat().st_mtime_ns != stamps[dirs[0]]
    assert (runs / dirs[1] / "result.json").stat().st_mtime_ns == stamps[dirs[1]]
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == dirs


def test_reproduce_reports_each_run_as_it_ends_with_an_eta_over_the_runs_still_to_train(capsys):
    from mora.reproduce import Progress

    now = [0.0]
    progress = Progress(4, finished={"done-before"}, clock=lambda: now[0])
    durations = {"done-before": 5, "a": 60, "b": 60, "c": 90}
    codes = {"c": 1}

    def fake_run(overrides, label):
        now[0] += durations[label]
        return codes.get(label, 0)

    run = progress.track(fake_run)
    assert [run([], label) for label in durations] == [0, 0, 0, 1]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "reproduce: 1/4 done (done-before) · 0m05s so far",            # a skipped run: nothing to estimate from
        "reproduce: 2/4 done (a) · 1m05s so far · ETA ≈ 2m10s",        # 65 s per trained run, 2 still to train
        "reproduce: 3/4 done (b) · 2m05s so far · ETA ≈ 1m02s",
        "reproduce: 4/4 done (c: exit 1) · 3m35s so far",
    ]
    assert progress.summary() == "4 run(s) (1 already finished, 3 trained) in 3m35s"
