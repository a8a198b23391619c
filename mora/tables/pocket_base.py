"""The pocket base — the small pretrained LLaMA every pocket fine-tuning table adapts (``make pocket-base``).

Runs: ``results/runs/pocket_base/`` (the one run of ``mora-run experiment=pocket_base``, copied there by
``python -m tasks.pretrain.base``).  Writes ``<stem>.md`` — model, data (every source with its package,
version and licence), training recipe, validation perplexity, greedy continuations — and
``<stem>_curves.png`` (training loss and validation perplexity).  The paper makes no claim about it: it
has no verdicts.
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import (
    Rendered, code_note, draw_loss, markdown_table, model_description, num, pyplot, rendered_by, save_figure, summarize,
)

NAME = "pocket_base"
TITLE = "The pocket base model"


def render(results: list[dict], out_dir: str | Path, stem: str, about: str = "") -> Rendered:
    out_md, out_png = Path(out_dir) / f"{stem}.md", Path(out_dir) / f"{stem}_curves.png"
    run = summarize(max(results, key=lambda r: r["finished_at"]))  # the newest build
    result, config = run.result, run.result["config"]
    data = (result.get("task") or {}).get("data") or {}
    timing = result.get("timing", {})
    sources = [[s["name"], f"{s['package']} {s['version']}", s["licence"], s["data_licence"], f"{s['train']['documents']:,}",
                f"{s['train']['characters']:,}", f"{s['validation']['documents']:,}"] for s in data.get("sources", [])]
    samples = [f"- *{s['prompt']}* → {s['continuation']!r}" for s in (result.get("task") or {}).get("samples", [])]
    evals = [[step, num(m.get("perplexity"))] for step, m in sorted(run.evals.items())]
    image = os.path.relpath(out_png, out_md.parent)
    t = config["train"]
    facts = [
        f"- Model: {model_description(run)}; hidden {config['model']['hidden_size']}, {config['model']['num_layers']} "
        f"layers, {config['model']['num_heads']} heads, {'tied' if config['model']['tie_word_embeddings'] else 'untied'} embeddings; "
        f"tokenizer: {Path(config['model']['tokenizer']).name} (a 4,096-id byte-level BPE trained on the corpus below).",
        f"- Recipe: full pretraining, {run.max_steps} steps of {t['global_batch']} × {config['task']['seq_len']} tokens "
        f"({timing.get('tokens_seen', 0):,} tokens seen), AdamW lr {config['optim']['lr']} ({config['optim']['schedule']}, "
        f"{config['optim']['warmup_steps']} warmup steps), seed {t['seed']}.",
        f"- Time: {timing.get('wall_s', 0) / 60:.1f} min wall ({num(timing.get('tokens_per_s'))} tokens/s), "
        f"on {result['env']['cpu'].get('usable_cores')} CPU cores of a {result['env']['cpu'].get('model')}.",
        f"- **Validation perplexity {num(run.final.get('perplexity'))}** on {config['task']['eval_tokens']:,} held-out tokens "
        f"(documents never trained on).",
    ]
    text = "\n\n".join([
        f"# {TITLE}",
        rendered_by(NAME, results),
        f"`model=pocket_base` loads this model from the cache (`{config['runs_dir']}/{run.name}/final` copied by "
        "`make pocket-base`). The pocket fine-tuning tables adapt it; it is not a model of the paper.",
        "## Model and training",
        "\n".join(facts),
        f"![training loss and validation perplexity]({image})",
        "## Validation perplexity during training",
        markdown_table(["step", "perplexity"], evals),
        "## Greedy continuations (final model)",
        "\n".join(samples) or "(none recorded)",
        "## Data: the pocket English corpus",
        f"{data.get('description', '')}; {(data.get('tokens') or {}).get('train', 0):,} training and "
        f"{(data.get('tokens') or {}).get('validation', 0):,} held-out tokens. Not the paper's data.",
        markdown_table(["source", "package", "package licence", "text licence", "train docs", "train characters",
                        "held-out docs"], sources),
        "## Notes",
        f"- {code_note([run])}",
    ]) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    _plot(run, out_png)
    return Rendered(markdown=out_md, plots=(out_png,), verdicts=())


def _plot(run, out_png: Path) -> None:
    plt = pyplot()
    fig, (loss_ax, ppl_ax) = plt.subplots(1, 2, figsize=(11, 4))
    draw_loss(loss_ax, [run])
    points = sorted((step, m["perplexity"]) for step, m in run.evals.items() if "perplexity" in m)
    if points:
        ppl_ax.plot(*zip(*points), marker="o")
    ppl_ax.set_yscale("log")
    ppl_ax.set_xlabel("step")
    ppl_ax.set_ylabel("validation perplexity")
    ppl_ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Pretraining the pocket base")
    save_figure(fig, out_png)
