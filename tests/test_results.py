"""The run-JSON layer: result.json round trip, metrics.jsonl → curves, and the environment capture.
Runs are synthetic (tests/fake_runs.py), so no training happens.  The tables are tested in test_tables.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fake_runs import paper_like as write_paper_like

from mora import envinfo
from mora.results import curves_from_metrics, load_results, read_metrics_jsonl


@pytest.fixture
def paper_like(tmp_path):
    return write_paper_like(tmp_path / "runs" / "table1")


def test_result_json_round_trip(paper_like):
    results = load_results([paper_like])
    assert [r["name"] for r in results] == sorted(r["name"] for r in results) and len(results) == 6
    one = load_results(paper_like / "uuid-lora-r256-lr0.0002")[0]
    assert set(one) >= {"name", "config", "params", "metrics", "curves", "timing", "env", "finished_at"}
    assert one["curves"]["eval"][2] == [700, {"char_acc": 1, "exact_match": 1}]
    assert one["curves"]["lr"][0] == [100, pytest.approx(2e-4 * 0.9)]  # learning_rate → lr
    with pytest.raises(FileNotFoundError):
        load_results(paper_like / "missing")


def test_metrics_jsonl_reader_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "loss": 2.0, "lr": 1e-4}\n{"step": 10, "eval/char_acc": 0.5}\n'
                    '{"step": 10, "eval/exact_match": 0.1}\n{"step": 20, "lo')
    curves = curves_from_metrics(read_metrics_jsonl(path))
    assert curves["loss"] == [[10, 2.0]] and curves["lr"] == [[10, 1e-4]]
    assert curves["eval"] == [[10, {"char_acc": 0.5, "exact_match": 0.1}]]  # one step's evals merged
    path.write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(json.JSONDecodeError):
        read_metrics_jsonl(path)


def test_envinfo_capture_keys_and_types():
    env = envinfo.capture()
    assert set(env) == {"git", "packages", "python", "platform", "hostname", "cpu", "ram_gb", "cuda", "torch_threads"}
    assert set(env["packages"]) == set(envinfo.PACKAGES) and env["packages"]["torch"]
    assert isinstance(env["cpu"]["cores"], int) and env["ram_gb"] > 0 and env["torch_threads"] >= 1
    assert isinstance(env["cuda"]["available"], bool) and env["cuda"]["count"] == len(env["cuda"]["devices"])
    if env["git"] is not None:
        assert len(env["git"]["commit"]) == 40 and isinstance(env["git"]["dirty"], bool)


def test_envinfo_finds_the_repo_from_the_package_not_the_cwd(tmp_path, monkeypatch):
    code = "import json; from mora import envinfo; print(json.dumps(envinfo.capture()['git']))"
    from_elsewhere = json.loads(subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                                               text=True, check=True).stdout)
    assert from_elsewhere["commit"] == envinfo.capture()["git"]["commit"]
    monkeypatch.setattr(envinfo, "REPO_ROOT", tmp_path)  # an installed copy outside any checkout
    assert envinfo.capture()["git"] is None
