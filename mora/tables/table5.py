"""Table 5 — training cost: a whole-model training step per method, against LoRA measured in the same session.

Runs: ``results/runs/table5/`` (``make reproduce-table5 [DEVICE=cuda]``; :mod:`mora.bench`), one result per
(device, model, method), plus the trainer-overhead rows of ``scripts/bench_trainer.py --record`` (their
``config.bench.kind`` is ``trainer``).  Writes ``<stem>.md``: for each device and model, ms per step,
tokens/s, peak memory and the ratios to LoRA at the same rank and to the frozen base; the trainer's
tokens/s against a bare loop; the paper's cost claims (:data:`mora.tables.paper.COST_CLAIMS`); and the
verdict on claim 6 (MoRA trains at most 1.15× LoRA's time) at the paper's own settings: rope at r=8,
sharing at r=256.
"""

from __future__ import annotations

from pathlib import Path

from . import paper
from .common import (
    DASH, HELD, NOT_HELD, NOT_TESTED, Rendered, Verdict, code_note, markdown_table, method_label, rendered_by, summarize,
)

NAME = "table5"
TITLE = "Table 5 — Training cost"

#: row order within a rank, and each row's name in the table
LABELS = {"frozen": "frozen base (only the input embeddings train)", "fft": "FFT", "lora": "LoRA (peft)",
          "mora_rope": "MoRA rope", "mora_sharing": "MoRA sharing", "dora": "DoRA (peft)"}
#: the paper's variant at each rank (v1 Table 5's hyperparameters: rotation at r=8, sharing at r=256)
PAPER_SETTINGS = (("mora_rope", 8), ("mora_sharing", 256))
#: claim 6's bound: the larger of the paper's two slowdowns
CLAIM_BOUND = max(claim.slowdown for claim in paper.COST_CLAIMS)
#: the width the claim was measured at (LLaMA-2-7B's hidden size)
LLAMA2_7B_WIDTH = 4096


def _key(result: dict) -> str:
    """``mora_rope``, ``lora``, ``fft``, ``frozen``: the row's method as :mod:`mora.bench` labels it."""
    method = result["config"]["method"]
    return f"mora_{method['compression']}" if method["name"] == "mora" else method["name"]


def _rank(result: dict) -> int | None:
    method = result["config"]["method"]
    return None if method["name"] in ("fft", "frozen") else method["r"]


def _kind(result: dict) -> str:
    """``step`` (a Table 5 row of :mod:`mora.bench`) or ``trainer`` (``scripts/bench_trainer.py``)."""
    return result["config"]["bench"]["kind"]


def _groups(results: list[dict]) -> dict[tuple[str, str], dict[tuple[str, int | None], dict]]:
    """``{(device kind, model): {(method key, r): result}}`` of the step rows, each group from its latest
    session only — ratios are taken within one session, never across."""
    results = [r for r in results if _kind(r) == "step"]
    latest: dict[tuple[str, str], str] = {}
    for result in results:
        group = (result["config"]["bench"]["device_kind"], result["config"]["model"]["name"])
        latest[group] = max(latest.get(group, ""), result["config"]["bench"]["id"])
    groups: dict = {group: {} for group in sorted(latest)}
    for result in results:
        group = (result["config"]["bench"]["device_kind"], result["config"]["model"]["name"])
        if result["config"]["bench"]["id"] == latest[group]:
            groups[group][(_key(result), _rank(result))] = result
    return groups


def _ratio(a: dict | None, b: dict | None, field: str = "ms_per_step") -> float | None:
    return a["metrics"][field] / b["metrics"][field] if a and b else None


def _x(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}×"


def _memory(mb: float) -> str:
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def _rows(rows: dict) -> list[list]:
    frozen = rows.get(("frozen", None))
    order = [("frozen", None), ("fft", None)] + sorted(
        ((key, r) for key, r in rows if r is not None), key=lambda kr: (kr[1], list(LABELS).index(kr[0])))
    table = []
    for key, r in order:
        if (key, r) not in rows:
            continue
        result = rows[(key, r)]
        m, steps = result["metrics"], result["metrics"]["step_ms"]
        spread = f"{min(steps):.1f}–{max(steps):.1f}" if len(steps) > 1 else DASH
        lora = rows.get(("lora", r)) if r is not None else None
        table.append([
            LABELS[key], DASH if r is None else r, f"{result['params']['trainable']:,}", f"{m['ms_per_step']:.1f}",
            spread, f"{m['tokens_per_s']:,.0f}", _memory(m["peak_mem_mb"]), _x(_ratio(result, lora)),
            _x(_ratio(result, lora, "peak_mem_mb")), _x(_ratio(result, frozen)),
        ])
    return table


def _section(group: tuple[str, str], rows: dict) -> str:
    kind, model = group
    any_row = next(iter(rows.values()))
    bench, spec = any_row["config"]["bench"], any_row["config"]["model"]
    machine = _machine(any_row)
    heading = (f"### {model} on {machine}\n\n"
               f"{spec['num_layers']} layer(s), hidden {spec['hidden_size']}, FFN {spec['intermediate_size']}, "
               f"{spec['num_heads']} heads, vocabulary {spec['vocab_size']:,}; {spec['dtype']} weights; micro batch "
               f"{spec['batch']} × {spec['seq_len']} tokens; median of {bench['steps']} steps after {bench['warmup']} "
               f"warm-up steps; session `{bench['id']}`, 1-min load average {bench['load_before']:.2f} at its start, "
               f"up to {max(r['config']['bench']['load_after'] for r in rows.values()):.2f} after a row.")
    headers = ["method", "r", "trainable params", "ms / step", "min–max ms", "tokens / s",
               "peak memory" + (" (CUDA max allocated)" if kind == "gpu" else " (process peak RSS)"),
               "× LoRA time (same r)", "× LoRA memory", "× frozen base time"]
    return heading + "\n\n" + markdown_table(headers, _rows(rows))


def _trainer_section(results: list[dict]) -> str:
    """The trainer against a bare loop on the same model, batch and optimizer (target ≥ 0.9)."""
    rows = []
    for result in sorted((r for r in results if _kind(r) == "trainer"), key=lambda r: r["name"]):
        cfg, m = result["config"], result["metrics"]
        target = cfg["bench"]["target"]
        rows.append([cfg["task"]["name"], cfg["model"]["name"], method_label(cfg), cfg["train"]["micro_batch"],
                     cfg["train"]["precision"], f"{m['trainer_tokens_per_s']:,.0f}",
                     " / ".join(f"{v:,.0f}" for v in m["bare_tokens_per_s"]), f"{m['ratio']:.3f}",
                     f"{'≥' if m['ratio'] >= target else '<'} {target}", _machine(result)])
    if not rows:
        return ""
    return ("### The trainer's own cost\n\n`scripts/bench_trainer.py`: tokens/s of `mora.train.train` (the real "
            "driver config, HF Trainer and callbacks) against a bare PyTorch loop training the same model, batch, "
            "AdamW groups, clipping and precision (run before and after the trainer), over the same window of "
            "steps, evaluations excluded.\n\n"
            + markdown_table(["task", "model", "method", "micro batch", "precision", "trainer tokens/s",
                              "bare loop tokens/s (before / after)", "trainer / bare", "target", "machine"], rows))


def _machine(result: dict) -> str:
    env = result.get("env") or {}
    if result["config"]["bench"]["device_kind"] == "gpu":
        devices = (env.get("cuda") or {}).get("devices") or [{"name": "unknown GPU"}]
        return f"{devices[0]['name']} (torch {(env.get('packages') or {}).get('torch')})"
    cpu = env.get("cpu") or {}
    return (f"{cpu.get('model', 'unknown CPU')}, {cpu.get('usable_cores') or cpu.get('cores')} cores, "
            f"{env.get('torch_threads')} torch threads (torch {(env.get('packages') or {}).get('torch')})")


def claims(groups: dict) -> list[Verdict]:
    """Claim 6: at the paper's settings MoRA's step takes at most :data:`CLAIM_BOUND` × LoRA's.

    The claim is about LLaMA-2-7B, so it is judged on the rows of LLaMA-2-7B's width (hidden 4096): the GPU's
    when a GPU session exists, else the CPU slice's.  Smaller models are listed as evidence only: MoRA's
    adapter FLOPs relative to the layer grow as the width shrinks (rope: n·r̂² ≈ k·r̂ per token)."""
    claim = (f"Claim 6 (MoRA trains at most {CLAIM_BOUND:.2f}× LoRA's time at equal trainable parameters; "
             f"rope at r=8, sharing at r=256)")
    measured = []  # (text, ratio, device kind, at LLaMA-2-7B's width)
    for (kind, model), rows in groups.items():
        wide = next(iter(rows.values()))["config"]["model"]["hidden_size"] == LLAMA2_7B_WIDTH
        for key, r in PAPER_SETTINGS:
            ratio = _ratio(rows.get((key, r)), rows.get(("lora", r)))
            if ratio is not None:
                measured.append((f"{model} on {kind}: {LABELS[key]} r={r} {ratio:.2f}×", ratio, kind, wide))
    judged = [m for m in measured if m[3] and m[2] == "gpu"] or [m for m in measured if m[3]]
    if not judged:
        return [Verdict(claim, NOT_TESTED, "no session measured MoRA and LoRA at LLaMA-2-7B's width"
                        + (f" (smaller models: {'; '.join(m[0] for m in measured)})" if measured else ""))]
    verdict = HELD if all(ratio <= CLAIM_BOUND for _, ratio, _, _ in judged) else NOT_HELD
    where = "the GPU rows" if judged[0][2] == "gpu" else "the CPU slice (no GPU session yet)"
    others = [m[0] for m in measured if m not in judged]
    return [Verdict(claim, verdict, f"judged on {where}: " + "; ".join(m[0] for m in judged)
                    + (f" (also measured: {'; '.join(others)})" if others else ""))]


def notes(groups: dict, results: list[dict]) -> list[str]:
    lines = [
        "Each row is its own process (`python -m mora.bench measure`), so its peak memory is its own: on a GPU "
        "CUDA's max allocated (weights, gradients, AdamW state, activations); on a CPU the process's peak RSS, which "
        "includes the ≈0.3–0.5 GB any torch process holds — compare CPU memory between rows, not with a GPU.",
        "One step = forward with labels, backward, AdamW step, zero grads; every method is attached by "
        "`mora.methods.build` as the trainer attaches it (dropout 0.05, all seven projections; LoRA α 16 at r=8, "
        "128 at r=256). MoRA keeps M in float32 on a bf16 base, as peft keeps LoRA's A and B.",
        "The frozen base trains only the input embeddings (issue 7's reference row): its backward runs through "
        "every layer, as an adapter's does, but it also pays the embedding's gradient and AdamW step, which on a "
        "one-layer slice can cost more than the adapters — adapters below 1.00× of it are no error.",
        "Ratios compare rows of one session (same machine, same load, minutes apart); the min–max column shows "
        "how steady each row was. On a shared CPU a busy neighbour shifts single rows: rerun to confirm a "
        "difference of a few per cent.",
    ]
    for (kind, model), rows in groups.items():
        mora_mem = [_ratio(rows.get((k, r)), rows.get(("lora", r)), "peak_mem_mb") for k, r in PAPER_SETTINGS]
        known = [m for m in mora_mem if m is not None]
        if known:
            lines.append(f"{model} on {kind}: MoRA's peak memory at the paper's settings is "
                         f"{', '.join(f'{m:.2f}×' for m in known)} LoRA's.")
    lines.append(code_note([summarize(result) for result in results]))
    return lines


def render(results: list[dict], out_dir: str | Path, stem: str, about: str = "") -> Rendered:
    """Write ``out_dir/<stem>.md``: one table per (device, model) session, the paper's claims, notes."""
    if not results:
        raise ValueError(f"{NAME}: no results to render")
    out_md = Path(out_dir) / f"{stem}.md"
    groups = _groups(results)
    verdicts = claims(groups)
    cost = markdown_table(["source", "MoRA / LoRA training time", "setting"],
                          [[c.source, f"{c.slowdown:.2f}×", c.setting] for c in paper.COST_CLAIMS])
    text = "\n\n".join([
        f"# {TITLE}",
        rendered_by(NAME, results),
        "## This suite: one training step of the whole model",
        *(_section(group, rows) for group, rows in groups.items()),
        *([trainer] if (trainer := _trainer_section(results)) else []),
        f"## The paper ({paper.LLAMA2_7B})",
        "Training time of MoRA relative to LoRA at equal trainable parameters:",
        cost,
        "## Notes",
        "\n".join(f"- {line}" for line in [*(v.markdown() for v in verdicts), *notes(groups, results)]),
        *([f"**How this scale was chosen** (from `conf/grids/{NAME}.yaml`): {about.strip()}"] if about else []),
    ]) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    return Rendered(markdown=out_md, plots=(), verdicts=tuple(verdicts))
