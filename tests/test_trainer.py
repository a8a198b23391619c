"""The trainer behind ``mora-run``: resume after SIGKILL (bit-exact), the NaN guard, logging (metrics.jsonl,
progress lines, W&B offline), and what ``result.json`` holds.

The ``slow`` tests run the real ``mora-run`` on the tiny CPU recipe (a 2-layer, 128-wide random LLaMA,
8-16 UUID pairs, a few dozen steps), in subprocesses so a SIGKILL is a real one.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mora import methods
from mora.callbacks import MetricsLog, non_finite_loss
from mora.train import MoraTrainer, last_checkpoint, wandb_run_id

REPO_ROOT = Path(__file__).resolve().parent.parent
MORA_RUN = str(Path(sys.executable).parent / "mora-run")
TINY = [
    "task.num_pairs=8", "train.global_batch=8", "train.micro_batch=8", "train.eval_every=0", "train.eval_at=[]",
    "train.log_every=1", "method.dropout=0", "launcher.cpu_threads=1",
]
PROGRESS = re.compile(r"^step +(\d+)/(\d+)  loss \d+\.\d{4}  lr \d\.\d\de[+-]\d\d  (?:[\d,]+ tok/s  )?ETA \d+[hm]\d\d[ms]?$")


def offline_env(**extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    env.pop("WANDB_DIR", None)
    return env


def mora_run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([MORA_RUN, *args], cwd=REPO_ROOT, env=env or offline_env(), capture_output=True,
                          text=True, timeout=timeout)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(d.name.split("-")[1]) for d in folder.glob("checkpoint-*") if (d / "trainer_state.json").is_file())


# ================================================================================ resume after SIGKILL
def _resume_command(runs_dir: Path, method: str, dropout: float) -> list[str]:
    # 16 pairs in micro-batches of 4, 2 accumulation steps: 2 optimizer steps per epoch, so the checkpoint
    # at step 9 is mid-epoch (data skipping); an evaluation at step 4 runs before it (lm-eval reseeds RNGs).
    return [
        MORA_RUN, f"runs_dir={runs_dir}", "name=r", f"method={method}", f"method.dropout={dropout}",
        "task.num_pairs=16", "train.global_batch=8", "train.micro_batch=4", "train.max_steps=16",
        "train.eval_every=0", "train.eval_at=[0.25]", "train.log_every=1", "train.save_every=3",
        "optim.warmup_steps=2", "launcher.cpu_threads=1",
    ]


@pytest.mark.slow
# MoRA with dropout: lean checkpoints (mora.train.MoraTrainer._save) and the RNG state; LoRA: peft's own
# checkpoint format.  (("mora", 0.0) also passes; left out to keep the suite short.)
@pytest.mark.parametrize("method, dropout", [("mora", 0.1), ("lora", 0.0)])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, method, dropout):
    env = offline_env()
    reference = subprocess.Popen(_resume_command(tmp_path / "ref", method, dropout), cwd=REPO_ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_dir = tmp_path / "killed" / "r"
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(_resume_command(tmp_path / "killed", method, dropout), cwd=REPO_ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 500
        while not any(step > 8 for step in checkpoint_steps(killed_dir)):
            assert first.poll() is None, f"the run ended before it could be killed:\n{(tmp_path / 'first.log').read_text()}"
            assert time.time() < deadline, "no checkpoint past step 8 in time"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (killed_dir / "result.json").exists()
    killed_at = max(checkpoint_steps(killed_dir))
    assert killed_at < 16
    # a kill while saving leaves a folder without trainer_state.json: the rerun must skip it
    partial = killed_dir / "checkpoints" / f"checkpoint-{killed_at + 3}"
    if not partial.exists():
        partial.mkdir()
        (partial / "model.safetensors").write_bytes(b"cut short")

    rerun = subprocess.run(_resume_command(tmp_path / "killed", method, dropout), cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"checkpoint-{killed_at} (step {killed_at})" in rerun.stdout
    assert "missing keys" not in rerun.stderr  # lean checkpoints lack the frozen weights by design
    assert reference.wait(timeout=600) == 0

    ref, res = records(tmp_path / "ref" / "r"), records(killed_dir)
    losses = lambda rs: [(r["step"], r["loss"]) for r in rs if "loss" in r]  # noqa: E731
    evals = lambda rs: [(r["step"], r["eval/char_acc"], r["eval/exact_match"]) for r in rs if "eval/char_acc" in r]  # noqa: E731
    assert [s for s, _ in losses(res)] == list(range(1, 17))  # every step once: no duplicates after the resume
    for (step_a, a), (step_b, b) in zip(losses(ref), losses(res), strict=True):
        assert step_a == step_b and math.isclose(a, b, rel_tol=1e-6), (step_a, a, b)
    assert evals(ref) == evals(res) and [s for s, *_ in evals(res)] == [4, 16]
    final_ref = json.loads((tmp_path / "ref" / "r" / "result.json").read_text())["metrics"]
    final_res = json.loads((killed_dir / "result.json").read_text())["metrics"]
    assert set(final_ref) >= {"char_acc", "exact_match", "final_loss"}
    for key in ("char_acc", "exact_match", "final_loss"):
        assert math.isclose(final_ref[key], final_res[key], rel_tol=1e-6, abs_tol=1e-12), (key, final_ref, final_res)


def test_last_checkpoint_skips_folders_cut_short(tmp_path):
    assert last_checkpoint(tmp_path / "absent") is None
    for step, state in ((3, "{}"), (6, "{}"), (9, None), (12, '{"glob')):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")


def _lean_trainer(make_llama, method: str):
    """What MoraTrainer._issue_warnings_after_load reads, without building a Trainer."""
    trainable = methods.build(make_llama(dtype=torch.float32), methods.MethodConfig(name=method, r=4), lr=1e-3)
    run_cfg = SimpleNamespace(method=methods.MethodConfig(name=method, r=4))
    return SimpleNamespace(model=trainable.model, run_cfg=run_cfg, args=SimpleNamespace(output_dir="ckpts"))


@pytest.mark.parametrize("method", ["mora", "fft"])
def test_resume_load_accepts_lean_checkpoints_and_refuses_misfits(make_llama, method):
    fake = _lean_trainer(make_llama, method)
    saved = methods.checkpoint_parameters(fake.model, fake.run_cfg.method)
    everything = fake.model.state_dict()
    lean = fake.model.load_state_dict({k: everything[k] for k in saved}, strict=False)
    MoraTrainer._issue_warnings_after_load(fake, lean)  # the frozen weights are missing by design: silent
    name = next(iter(saved))
    short = fake.model.load_state_dict({k: everything[k] for k in saved if k != name}, strict=False)
    with pytest.raises(RuntimeError, match="does not fit"):
        MoraTrainer._issue_warnings_after_load(fake, short)
    extra = fake.model.load_state_dict({**{k: everything[k] for k in saved}, "nope.weight": torch.zeros(1)}, strict=False)
    with pytest.raises(RuntimeError, match="nope.weight"):
        MoraTrainer._issue_warnings_after_load(fake, extra)


# ================================================================================ NaN guard
@pytest.mark.slow
def test_nan_guard_stops_with_a_clear_message_and_keeps_the_good_checkpoint(tmp_path):
    run_dir = tmp_path / "n"
    proc = mora_run(f"runs_dir={tmp_path}", "name=n", *TINY, "train.max_steps=30", "train.save_every=2",
                    "optim.lr=1e6", "optim.warmup_steps=0", "optim.max_grad_norm=0")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stderr
    match = re.search(r"loss became non-finite \((nan|inf|-inf)\) at step (\d+); the last good checkpoint is (\S+)\.", lines[0])
    assert match, lines[0]
    nan_step, named = int(match.group(2)), Path(match.group(3))
    steps = checkpoint_steps(run_dir)
    assert steps and max(steps) < nan_step  # nothing saved at or after the bad step
    assert named == run_dir / "checkpoints" / f"checkpoint-{max(steps)}"
    assert not (run_dir / "result.json").exists()
    logged = [r["loss"] for r in records(run_dir) if "loss" in r]
    assert len(logged) == nan_step - 1 and all(math.isfinite(x) for x in logged)


def test_non_finite_message():
    text = str(non_finite_loss(float("nan"), 7, "runs/x/checkpoints/checkpoint-6"))
    assert "non-finite (nan) at step 7" in text and "last good checkpoint is runs/x/checkpoints/checkpoint-6" in text
    assert "\n" not in text
    assert "no checkpoint was written yet" in str(non_finite_loss(float("inf"), 1, None))


# ================================================================================ logging
@pytest.mark.slow
def test_tiny_run_result_json_logging_and_progress_lines(tmp_path):
    run_dir = tmp_path / "t"
    proc = mora_run(f"runs_dir={tmp_path}", "name=t", *[a for a in TINY if not a.startswith("train.eval_at")],
                    "train.eval_at=[0.5]", "train.max_steps=4", "train.save_every=2", "logger=none")
    assert proc.returncode == 0, proc.stderr
    # logger=none: metrics.jsonl only (no W&B), beside the config, checkpoints, eval data, result, the ΔW analysis and the
    # final adapter with its tokenizer
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "analysis.json", "checkpoints", "config.yaml", "final", "metrics.jsonl", "result.json", "uuid_eval.jsonl"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in (run_dir / "final").iterdir()}
    # stdout is a pipe: plain progress lines instead of a progress bar
    progress = [line for line in proc.stdout.splitlines() if PROGRESS.match(line)]
    assert [int(PROGRESS.match(line).group(1)) for line in progress] == [1, 2, 3, 4], proc.stdout
    assert all(PROGRESS.match(line).group(2) == "4" for line in progress)
    assert any("tok/s" in line for line in progress)
    assert "\r" not in proc.stdout and "it/s]" not in proc.stdout + proc.stderr

    result = json.loads((run_dir / "result.json").read_text())
    assert result["name"] == "t"
    config = result["config"]
    assert config["method"]["name"] == "mora" and config["train"]["max_steps"] == 4 and config["task"]["num_pairs"] == 8
    params = result["params"]
    assert 0 < params["trainable"] < params["total"] and params["rank_summary"]
    metrics = result["metrics"]
    assert set(metrics) >= {"char_acc", "exact_match", "final_loss"}
    assert 0 <= metrics["char_acc"] <= 1 and 0 <= metrics["exact_match"] <= 1 and math.isfinite(metrics["final_loss"])
    curves = result["curves"]
    assert [step for step, _ in curves["loss"]] == [1, 2, 3, 4] and curves["loss"][-1][1] == metrics["final_loss"]
    assert [step for step, _ in curves["eval"]] == [2, 4] and curves["eval"][-1][1]["char_acc"] == metrics["char_acc"]
    timing = result["timing"]
    assert timing["wall_s"] > 0 and timing["tokens_per_s"] > 0 and timing["peak_mem_mb"] > 0
    env = result["env"]
    assert set(env["git"]) == {"commit", "dirty"} and re.fullmatch(r"[0-9a-f]{40}", env["git"]["commit"])
    assert isinstance(env["git"]["dirty"], bool)
    assert env["packages"]["torch"] and env["packages"]["transformers"]
    assert env["cpu"] and env["python"]


@pytest.mark.slow
def test_wandb_offline_run_under_the_run_dir_with_a_stable_id(tmp_path):
    env = offline_env(WANDB_MODE="offline", WANDB_SILENT="true")
    args = (f"runs_dir={tmp_path}", "name='w=1'", *TINY, "train.max_steps=4", "train.save_every=2", "logger=wandb")
    run_dir = tmp_path / "w=1"
    first = mora_run(*args, env=env)
    assert first.returncode == 0, first.stderr
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith("-" + wandb_run_id("w=1")), runs
    assert wandb_run_id("w=1") == "w_1"
    assert list(runs[0].glob("run-w_1.wandb"))
    # killed after its last checkpoint, before result.json: the rerun resumes, re-attaching to the same id
    (run_dir / "result.json").unlink()
    second = mora_run(*args, env=env)
    assert second.returncode == 0, second.stderr
    assert "resuming w=1" in second.stdout
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith("-w_1") for r in runs), runs
    # nothing was trained or evaluated again, yet the result has the run's final evaluation
    metrics = json.loads((run_dir / "result.json").read_text())["metrics"]
    assert set(metrics) >= {"char_acc", "exact_match", "final_loss"}
    assert [r["step"] for r in records(run_dir) if "loss" in r] == [1, 2, 3, 4]


def test_wandb_run_id_is_stable_short_and_distinct():
    assert wandb_run_id("uuid-mora_rope-r8-lr3e-4-s42-max_steps=200") == "uuid-mora_rope-r8-lr3e-4-s42-max_steps_200"
    long_a, long_b = "x" * 150 + "-max_steps=100", "x" * 150 + "-max_steps=200"
    assert len(wandb_run_id(long_a)) <= 128 and wandb_run_id(long_a) == wandb_run_id(long_a)
    assert wandb_run_id(long_a) != wandb_run_id(long_b)


def test_metrics_log_truncates_and_prints_plain_lines(tmp_path, capsys):
    log = MetricsLog(tmp_path / "metrics.jsonl", print_lines=True)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=10, num_input_tokens_seen=0)
    log.on_train_begin(None, state, None)
    for step in (1, 2, 3):
        state.global_step = step
        log.on_log(None, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-3, "num_input_tokens_seen": 100 * step})
    log.on_log(None, state, None, logs={"eval/char_acc": 0.5, "eval_s": 0.1})
    lines = capsys.readouterr().out.splitlines()
    assert all(PROGRESS.match(line) for line in lines[:3]), lines
    assert "tok/s" in lines[1] and lines[3].startswith("step      3/10  eval  char_acc 0.5000")
    log.truncate_after(2)
    assert [r["step"] for r in records(tmp_path)] == [1, 2]
