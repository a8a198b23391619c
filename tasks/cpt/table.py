"""Table 2's BioMed and Finance columns, computed from ``task=cpt`` run JSONs (claim 3 of the paper).

Everything here reads result dicts only (``result["metrics"]``, ``result["task"]``), so the Table 2 module
(:mod:`mora.tables.table2`) can use it without importing the task.  Per domain:

* one column per benchmark — ours beside the paper's (arXiv v1 Tables 6, 7) — and the domain average beside
  the paper's Table 1 column; a benchmark a run could not score says why ("hub/local only"), never a number;
  a score within two binomial standard errors of an input-blind guesser (uniform or majority answer) on the rows
  scored is marked ``†``;
* held-out domain perplexity (the pocket-scale signal: lower is better) and the perplexity of the base's own
  held-out general text (forgetting);
* each row's learning rate is its best by held-out domain perplexity, never by a benchmark.

Claim 3 (:func:`claims`): **3a** MoRA beats LoRA at every rank with both, **3b** full fine-tuning beats every
adapter row — judged on held-out domain perplexity (the domain averages are printed beside, and decide nothing
while a benchmark sits at chance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from mora.tables import paper
from mora.tables.common import DASH, HELD, NOT_HELD, NOT_TESTED, Run, Verdict, fmt_lr, markdown_table, num, pct

TASK = "cpt"
DOMAINS = ("biomed", "finance")
SELECT = "perplexity"  # each row's LR: the lowest held-out domain perplexity
PAPER_PER_TASK = {"biomed": paper.TABLE2_BIOMED, "finance": paper.TABLE2_FINANCE}
PAPER_AVERAGE = {"biomed": "BioMed", "finance": "Finance"}  # columns of paper.TABLE2_FINETUNING
PAPER_METHODS = {"FFT": "FFT", "LoRA": "LoRA", "LoRA+": "LoRA+", "ReLoRA": "ReLoRA", "AsyLoRA": "AsyLoRA", "DoRA": "DoRA",
                 "MoRA rope": "MoRA", "MoRA sharing": "MoRA"}
CHANCE_MARK = "†"


def domain_of(run: Run) -> str | None:
    """``biomed`` / ``finance`` for a continual-pretraining run, None for any other task's."""
    task = run.result["config"]["task"]
    return task.get("domain") if task.get("name") == TASK else None


def by_domain(runs: Iterable[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in runs:
        if (domain := domain_of(run)) is not None:
            out.setdefault(domain, []).append(run)
    return out


def benchmarks(run: Run) -> dict[str, dict]:
    """The run's benchmark descriptions (``result["task"]["benchmarks"]``), by key, in the domain's order."""
    return (run.result.get("task") or {}).get("benchmarks") or {}


def at_chance(run: Run, key: str) -> bool:
    """Is ``key`` within two binomial standard errors of its chance level on the rows the run scored?"""
    value, chance, n = (run.final.get(k) for k in (key, f"{key}_chance", f"{key}_n"))
    if value is None or chance is None or not n:
        return False
    return abs(value - chance) <= 2 * math.sqrt(max(chance * (1 - chance), 1e-12) / n)


def cell(run: Run, key: str) -> str:
    """``61.0``, ``24.0†`` (at chance) or ``n/a (why)``."""
    value = run.final.get(key)
    if value is None:
        return f"n/a ({benchmarks(run).get(key, {}).get('why', 'not in the run')})"
    if key == "domain_average":
        n, total = int(run.final.get("domain_average_n", 0)), len(benchmarks(run).get(key, {}).get("of", []))
        return pct(value) + (f" ({n} of {total})" if n != total else "")
    return pct(value) + (CHANCE_MARK if at_chance(run, key) else "")


def paper_cell(domain: str, run: Run, rank_map: dict[int, int], key: str) -> str:
    """The paper's figure for the run's method and (mapped) rank, or — where it has none."""
    method, r = PAPER_METHODS.get(run.label), None if run.r is None else rank_map.get(run.r)
    title = benchmarks(run).get(key, {}).get("title")
    table, column = (paper.TABLE2_FINETUNING, PAPER_AVERAGE[domain]) if key == "domain_average" else (PAPER_PER_TASK[domain], title)
    try:
        value = table.value(method, r, column)
    except KeyError:
        return DASH
    return DASH if value is None else f"{value:.1f}"


def rank_map(runs: Iterable[Run]) -> dict[int, int]:
    """The runs' adapter ranks → the paper's (8, 256): the smallest stands for 8, the largest for 256."""
    ranks = sorted({run.r for run in runs if run.r is not None})
    if set(ranks) <= {8, 256}:
        return {r: r for r in ranks}
    return {r: 8 if r == ranks[0] else 256 for r in ranks}


def domain_table(domain: str, best: list[Run]) -> str:
    """One row per method and rank (its best LR): every benchmark and the average, ours / the paper's,
    then the held-out domain perplexity and the general perplexity."""
    keys = [k for k in benchmarks(best[0])]  # the domain's benchmarks, then "domain_average"
    ranks = rank_map(best)
    headers = ["method", "r", "lr", *(benchmarks(best[0])[k]["title"] for k in keys), "domain ppl", "general ppl"]
    rows = [[run.label, run.r or DASH, fmt_lr(run.lr), *(f"{cell(run, k)} / {paper_cell(domain, run, ranks, k)}" for k in keys),
             num(run.final.get("perplexity")), num(run.final.get("general_perplexity"))] for run in best]
    return markdown_table(headers, rows)


def _best(best: dict[tuple[str, int | None], Run], family: str, r: int | None) -> Run | None:
    runs = [run for (label, rank), run in best.items() if run.family == family and rank == r and run.final.get(SELECT)]
    return min(runs, key=lambda run: run.final[SELECT], default=None)


def claims(best_by_domain: dict[str, dict[tuple[str, int | None], Run]]) -> list[Verdict]:
    """Claim 3 on held-out domain perplexity, over the domains given (named in the claim when only one is): 3a MoRA <
    LoRA at every rank with both; 3b FFT below every adapter row.  The domain averages ride along in the evidence."""
    where = f" [{next(iter(best_by_domain))}]" if len(best_by_domain) == 1 else ""
    claim_a = f"Claim 3a (continual pretraining: MoRA beats LoRA){where}"
    claim_b = f"Claim 3b (continual pretraining: full fine-tuning stays best){where}"
    evidence_a, evidence_b, held_a, held_b = [], [], True, True
    for domain in DOMAINS:
        best = best_by_domain.get(domain) or {}
        for r in sorted({rank for (_, rank) in best if rank is not None}):
            mora, lora = _best(best, "mora", r), _best(best, "lora", r)
            if mora and lora:
                m, l = mora.final[SELECT], lora.final[SELECT]
                held_a &= m < l
                both = all("domain_average" in run.final for run in (mora, lora))
                averages = f"; average {pct(mora.final['domain_average'])} vs {pct(lora.final['domain_average'])}" if both else ""
                evidence_a.append(f"{domain} r={r}: ppl MoRA {num(m)} vs LoRA {num(l)} ({m / l - 1:+.1%}){averages}")
        fft = _best(best, "fft", None)
        adapters = [run for (label, rank), run in best.items() if run.family != "fft" and run.final.get(SELECT)]
        if fft and adapters:
            closest = min(adapters, key=lambda run: run.final[SELECT])
            held_b &= fft.final[SELECT] < closest.final[SELECT]
            evidence_b.append(f"{domain}: FFT ppl {num(fft.final[SELECT])} vs best adapter {closest.method()} {num(closest.final[SELECT])}")
    rule = "held-out domain perplexity, each row at its best learning rate"
    return [
        Verdict(claim_a, (HELD if held_a else NOT_HELD) if evidence_a else NOT_TESTED,
                "; ".join(evidence_a) + f" ({rule})" if evidence_a else "no domain has both a LoRA and a MoRA run"),
        Verdict(claim_b, (HELD if held_b else NOT_HELD) if evidence_b else NOT_TESTED,
                "; ".join(evidence_b) + f" ({rule})" if evidence_b else "no domain has an FFT run and an adapter run"),
    ]
