"""``scale=gpu``: one GPU, minutes — the third value of ``${by_scale:...}`` (else the pocket one), and Table 1's
grid on the real pretrained SmolLM2-135M, composed and validated as ``mora.reproduce`` runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mora.config import ConfigError, validate
from mora.reproduce import compose_run, grid_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("scale, expected", [("pocket", (1, 1, 1)), ("paper", (2, 2, 2)), ("gpu", (1, 3, None))])
def test_by_scale_takes_the_gpu_value_or_else_the_pocket_one(scale, expected):
    cfg = OmegaConf.create({"scale": scale, "two": "${by_scale:1,2}", "three": "${by_scale:1,2,3}",
                            "null": "${by_scale:1,2,null}"})
    assert (cfg.two, cfg.three, cfg.null) == expected


def test_table1_grid_at_gpu_scale_is_smollm2_in_bf16_and_validates():
    points = grid_overrides("table1", "gpu", None)
    assert len(points) == 5
    configs = [validate(compose_run(point)) for point in points]
    for cfg in configs:
        assert (cfg.scale, cfg.model.name, cfg.train.precision, cfg.task.num_pairs) == ("gpu", "smollm2_135m", "bf16", 2000)
        assert cfg.task.eval_batch_size == 128 and cfg.train.max_steps == 300 and cfg.optim.warmup_steps == 30
    assert sorted((c.method.name, c.method.r) for c in configs if c.method.name != "fft") == [
        ("lora", 8), ("lora", 32), ("mora", 8), ("mora", 32)]
    zero2 = validate(compose_run([*points[1], "launcher=zero2", "launcher.num_processes=1"]))
    assert (zero2.launcher.name, zero2.launcher.num_processes, zero2.method.compression) == ("zero2", 1, "rope")


def test_unknown_scale_is_refused():
    with pytest.raises(ConfigError, match="scale='tpu' is not one of"):
        validate(compose_run(["scale=tpu"]))


def test_gpu_session_script_parses_and_refuses_to_run_its_device_steps_here():
    assert subprocess.run(["bash", "-n", "scripts/gpu_session.sh"], cwd=REPO).returncode == 0
    done = subprocess.run(["bash", "scripts/gpu_session.sh", "bench"], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "$OUT is not set" in done.stderr
