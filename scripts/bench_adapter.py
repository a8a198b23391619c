"""Adapter speed benchmark: one layer's forward+backward time for base / LoRA / MoRA, against FLOP floors.

    .venv/bin/python scripts/bench_adapter.py --out results/bench_adapter.md      # what `make bench` runs
    python scripts/bench_adapter.py --device cuda --dtype bfloat16 --tokens 8192 --out bench_adapter-cuda.md

Rows are the LLaMA-2-7B projection shapes (q/k/v/o 4096×4096, gate/up 4096→11008, down 11008→4096) at
r=8 and r=256.  Per shape, every method wraps the *same* frozen ``nn.Linear`` (bias-free, as in LLaMA):

* ``base``     the frozen layer alone;
* ``LoRA``     peft's own ``lora.Linear`` (injected by ``inject_adapter_in_model`` with ``LoraConfig``,
               dropout 0, α = 2r) — the code path peft really runs;
* ``rope``     ``MoraLinear(..., compression="rope")``, dropout 0;
* ``sharing``  ``MoraLinear(..., compression="sharing")``, dropout 0.

One sample is one training step of the layer on ``--tokens`` tokens, in ``--dtype`` (float32 by default;
on a bfloat16/float16 base LoRA's A and B are float32, as ``get_peft_model`` makes them, and so is MoRA's
M) on ``--device`` (CUDA samples are bracketed by synchronisations): ``out = layer(x)`` with
``x`` requiring grad (as inside a network), then the backward pass.  By default the backward is driven by
a fixed dense upstream gradient ``G`` (``out.backward(G)``, i.e. loss = (out·G).sum()), which is what a
layer inside a network receives and costs nothing extra; ``--loss sum`` / ``--loss sq`` use
``out.sum()`` / ``out.pow(2).mean()`` instead (``sum`` feeds a stride-0 gradient of ones, which makes
PyTorch copy it before the matmuls; ``sq`` adds a few elementwise passes over the output).  Gradients are
cleared (set to None) between samples, outside the timed region.

Noise: the machine may be shared.  Methods are measured round-robin *within* each repeat (the starting
method rotates every round), so a slow spell hits every method alike; times are medians over the
``--repeats`` rounds after ``--warmup`` rounds, and the ratios are medians of the per-round (paired)
ratios.  The spread column of the verdicts is the inter-quartile range of those paired ratios.  A shape
stops early (after at least ``--min-repeats`` rounds) when it exhausts its share of ``--max-seconds``, so
a busy machine cannot stretch the run without bound; the header says how many rounds each shape got.

FLOP floor (multiply-accumulates per token, forward + backward):
    base    2·k·d                 (forward + input gradient; the frozen weight gets no gradient)
    LoRA    + 3·r·(k+d)           (A and B: forward, input gradient, weight gradient)
    MoRA    + 3·m                 m = MACs of M per token: used_blocks·r̂² for rope (used_blocks =
                                  min(ceil(k/r̂), ceil(d/r̂)); truncated blocks are skipped), r̂² for sharing
    floor(MoRA/LoRA) = (2kd + 3m) / (2kd + 3r(k+d))
A method "meets its floor" when its measured MoRA/LoRA ratio is at most 3% above the floor ratio.

The floor counts every multiply-accumulate alike.  A closing note measures what BLAS actually does with
M's matmuls — (tokens·blocks, r̂) × (r̂, r̂) — against the base layer's matmul, because MKL's sgemm is
markedly slower when the output width r̂ is not a multiple of 8 (r̂ = 348 and 1966 here).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peft  # noqa: E402
from peft import LoraConfig, inject_adapter_in_model  # noqa: E402

from mora.adapters import MoraLinear, square_rank  # noqa: E402
from mora.bench import DTYPES, device_description, synchronize  # noqa: E402

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (k = in, d = out): q/k/v/o, gate/up, down
SHAPE_NAMES = {(4096, 4096): "q/k/v/o", (4096, 11008): "gate/up", (11008, 4096): "down"}
MERGE_SHAPES = [(4096, 11008), (11008, 4096)]
RANKS = [8, 256]
MORA = ["rope", "sharing"]
TOLERANCE = 0.03  # a MoRA/LoRA ratio may exceed its FLOP floor ratio by this fraction
ABSOLUTE_TARGETS = {"rope": (8, 1.10), "sharing": (None, 1.03)}  # (rank it applies to or None = all, max ratio)
MERGE_TARGET_S = 0.5


# ---------------------------------------------------------------------------------------------- FLOPs
def mora_macs(method: str, k: int, d: int, r: int) -> int:
    """MACs of M applied to one token (forward only) for a MoRA ``method`` at LoRA rank ``r``."""
    rank = square_rank(k, d, r, method)
    if method == "rope":
        used_blocks = min(math.ceil(k / rank), math.ceil(d / rank))
        return used_blocks * rank * rank
    if method == "sharing":
        return rank * rank
    raise ValueError(method)


def floor_to_base(method: str, k: int, d: int, r: int) -> float:
    """FLOP floor of ``method`` relative to the frozen base layer (forward + backward)."""
    base = 2 * k * d
    if method == "base":
        return 1.0
    extra = r * (k + d) if method == "lora" else mora_macs(method, k, d, r)
    return (base + 3 * extra) / base


# ---------------------------------------------------------------------------------------------- modules
class _Holder(nn.Module):
    """A module holding the linear, so that peft injects its LoRA layer exactly as into a real model."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear


def build_methods(base: nn.Linear, ranks: list[int], generator: torch.Generator) -> dict[str, nn.Module]:
    """Every timed method for one shape, all wrapping the same frozen ``base``.

    Adapter weights get small random values (not peft's zero B / MoRA's zero M), so that no method can
    profit from a zero operand; the values do not affect the timings otherwise.
    """
    base.requires_grad_(False)
    methods: dict[str, nn.Module] = {"base": base}
    for r in ranks:
        config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["proj"])
        lora = inject_adapter_in_model(config, _Holder(base)).proj
        assert type(lora).__module__.startswith("peft.tuners.lora"), type(lora)
        if base.weight.dtype in (torch.bfloat16, torch.float16):  # get_peft_model's autocast_adapter_dtype
            lora.lora_A.float(), lora.lora_B.float()
        with torch.no_grad():
            weight = lora.lora_B["default"].weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.01)
        methods[f"lora{r}"] = lora
        for name in MORA:
            layer = MoraLinear(base, r=r, compression=name, dropout=0.0)
            with torch.no_grad():
                layer.M.copy_(torch.randn(layer.M.shape, generator=generator) * 0.01)
            methods[f"{name}{r}"] = layer
    return methods


def zero_grads(module: nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    for p in module.parameters():
        p.grad = None


def train_step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, loss: str) -> None:
    out = module(x)
    if loss == "grad":
        out.backward(grad)
    elif loss == "sum":
        out.sum().backward()
    else:
        out.pow(2).mean().backward()


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class ShapeTimes:
    k: int
    d: int
    samples: dict[str, list[float]]  # method → seconds per round (after warmup)

    def median(self, method: str) -> float:
        return statistics.median(self.samples[method])

    def paired(self, num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(self.samples[num], self.samples[den])]

    def ratio(self, num: str, den: str) -> float:
        return statistics.median(self.paired(num, den))

    def ratio_iqr(self, num: str, den: str) -> tuple[float, float]:
        q = statistics.quantiles(self.paired(num, den), n=4) if len(self.samples[num]) > 1 else [self.ratio(num, den)] * 3
        return q[0], q[2]


def time_shape(k: int, d: int, args: argparse.Namespace, budget_s: float) -> ShapeTimes:
    """Warmup, then up to ``--repeats`` measured rounds; stops early (never below ``--min-repeats``) once
    the shape has used ``budget_s`` seconds, so that a busy machine cannot stretch the run without bound."""
    generator = torch.Generator().manual_seed(args.seed)
    base = nn.Linear(k, d, bias=False)
    with torch.no_grad():
        base.weight.normal_(0, k**-0.5, generator=generator)
    base.to(device=args.device, dtype=DTYPES[args.dtype])
    methods = build_methods(base, args.ranks, generator)
    x = torch.randn(args.tokens, k, generator=generator).to(args.device, DTYPES[args.dtype]).requires_grad_(True)
    grad = torch.randn(args.tokens, d, generator=generator).to(args.device, DTYPES[args.dtype])
    names = list(methods)
    samples: dict[str, list[float]] = {n: [] for n in names}
    started = time.perf_counter()
    for round_ in range(args.warmup + args.repeats):
        measured = round_ - args.warmup
        if measured >= args.min_repeats and time.perf_counter() - started > budget_s:
            break
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:  # round-robin, rotating the starting method
            module = methods[name]
            zero_grads(module, x)
            synchronize(args.device)
            start = time.perf_counter()
            train_step(module, x, grad, args.loss)
            synchronize(args.device)
            elapsed = time.perf_counter() - start
            if round_ >= args.warmup:
                samples[name].append(elapsed)
    del methods, x, grad, base
    gc.collect()
    return ShapeTimes(k, d, samples)


def time_merges(args: argparse.Namespace) -> list[dict]:
    """Median seconds of ``delta_weight()`` (under no_grad, as merge() calls it) and of ``merge()``."""
    rows = []
    generator = torch.Generator().manual_seed(args.seed)
    for k, d in MERGE_SHAPES:
        base = nn.Linear(k, d, bias=False, device=args.device, dtype=DTYPES[args.dtype])
        for r in args.ranks:
            for name in MORA:
                layer = MoraLinear(base, r=r, compression=name)
                with torch.no_grad():
                    layer.M.copy_(torch.randn(layer.M.shape, generator=generator) * 0.01)
                delta, merge = [], []
                for i in range(args.merge_warmup + args.merge_repeats):
                    with torch.no_grad():
                        synchronize(args.device)
                        start = time.perf_counter()
                        dw = layer.delta_weight()
                        synchronize(args.device)
                        t_delta = time.perf_counter() - start
                    del dw
                    start = time.perf_counter()
                    layer.merge()
                    synchronize(args.device)
                    t_merge = time.perf_counter() - start
                    layer.unmerge()
                    if i >= args.merge_warmup:
                        delta.append(t_delta)
                        merge.append(t_merge)
                rows.append(dict(k=k, d=d, r=r, method=name, rank=layer.rank,
                                 delta=statistics.median(delta), merge=statistics.median(merge)))
        del base
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------------------- report
def machine_header(args: argparse.Namespace, started: datetime.datetime, load_before, load_after, elapsed,
                   results: list[ShapeTimes]) -> list[str]:
    rounds = ", ".join(f"{st.k}→{st.d}: {len(st.samples['base'])}" for st in results)
    loss = {"grad": "out.backward(G), G a fixed dense random gradient", "sum": "out.sum()",
            "sq": "out.pow(2).mean()"}[args.loss]
    return [
        f"- machine: {device_description('cpu')}, {platform.system()} {platform.machine()}"
        + (f"; timed on {device_description(args.device)}" if args.device != "cpu" else ""),
        f"- torch {torch.__version__} with {torch.get_num_threads()} threads; peft {peft.__version__}; "
        f"Python {platform.python_version()}",
        f"- date: {started.isoformat(timespec='seconds')}; bench wall time {elapsed:.0f} s; "
        f"load average before/after: {load_before} / {load_after}",
        f"- token batch: {args.tokens} tokens × one layer, {args.dtype}; backward driven by {loss}; "
        f"{args.warmup} warmup + {args.repeats} measured rounds per shape (fewer if the time budget ran out: "
        f"{rounds}), methods round-robin within each round",
        "- times: median ms per forward+backward; ×base and MoRA/LoRA: median of per-round paired ratios; "
        "floor: FLOP (MAC) ratio, see scripts/bench_adapter.py",
    ]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def speed_table(results: list[ShapeTimes], ranks: list[int]) -> tuple[list[str], list[str], list[dict]]:
    lines = [
        "| layer (k→d) | r | r̂ rope / sharing | base ms | LoRA ms (×base; floor) | rope ms (×base; floor) "
        "| sharing ms (×base; floor) | rope/LoRA (floor) | sharing/LoRA (floor) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts, records = [], []
    for st in results:
        k, d = st.k, st.d
        for r in ranks:
            lora = f"lora{r}"
            label = f"{k}→{d}" + (f" ({SHAPE_NAMES[(k, d)]})" if (k, d) in SHAPE_NAMES else "")
            cells = [label, str(r),
                     f"{square_rank(k, d, r, 'rope')} / {square_rank(k, d, r, 'sharing')}", fmt_ms(st.median("base"))]
            for m, method in [(lora, "lora")] + [(f"{n}{r}", n) for n in MORA]:
                cells.append(f"{fmt_ms(st.median(m))} ({st.ratio(m, 'base'):.3f}×; {floor_to_base(method, k, d, r):.3f}×)")
            parts = []
            for name in MORA:
                m = f"{name}{r}"
                measured = st.ratio(m, lora)
                floor = floor_to_base(name, k, d, r) / floor_to_base("lora", k, d, r)
                cells.append(f"**{measured:.3f}×** ({floor:.3f}×)")
                q1, q3 = st.ratio_iqr(m, lora)
                excess = measured / floor - 1
                ok = excess <= TOLERANCE
                text = f"{name} {measured:.3f}× vs floor {floor:.3f}× ({excess:+.1%}, IQR {q1:.3f}–{q3:.3f}): " + (
                    "PASS" if ok else "MISS")
                target_rank, target = ABSOLUTE_TARGETS[name]
                abs_ok = None
                if target_rank is None or target_rank == r:
                    abs_ok = measured <= target
                    text += f"; target ≤ {target:.2f}×: {'PASS' if abs_ok else 'MISS'}"
                parts.append(text)
                records.append(dict(k=k, d=d, r=r, method=name, ratio=measured, floor=floor, ok=ok, abs_ok=abs_ok))
            lines.append("| " + " | ".join(cells) + " |")
            verdicts.append(f"- {k}→{d} r={r}: " + "; ".join(parts))
    return lines, verdicts, records


def noise_note(results: list[ShapeTimes], records: list[dict], args, load_before: str, load_after: str) -> str:
    """One line on how trustworthy the run was: machine load and the spread of the paired ratios."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    widths = []
    for st in results:
        for r in args.ranks:
            for name in MORA:
                q1, q3 = st.ratio_iqr(f"{name}{r}", f"lora{r}")
                widths.append(q3 - q1)
    base_spread = max(max(st.samples["base"]) / min(st.samples["base"]) for st in results)
    load = max(float(load_before.split()[0]), float(load_after.split()[0]))
    busy = load > 0.5 * usable or max(widths) > 0.05
    passed = sum(r["ok"] for r in records)
    text = (f"Noise: widest IQR of a MoRA/LoRA paired ratio {max(widths):.3f}; slowest/fastest base sample "
            f"{base_spread:.2f}×; 1-min load average up to {load:.2f} on {usable} cores. "
            f"{passed}/{len(records)} MoRA ratios within {TOLERANCE:.0%} of their floor.")
    if busy:
        text += (" **The machine was busy during this run: the ratios are noisy and the verdicts indicative only; "
                 "rerun `make bench` on an idle machine.**")
    return text


def gemm_note(args: argparse.Namespace, shapes: list[tuple[int, int]]) -> str:
    """Throughput of M's matmul per r̂ (as rope/sharing run it) relative to the base layer's matmul.

    Interleaved like the speed table: every round times each matmul once (small ones repeated to a
    comparable amount of work), and each keeps its best round.
    """
    k0, d0 = shapes[0]
    cases = {(args.tokens, k0, d0): "base"}
    for k, d in shapes:
        for r in args.ranks:
            for name in MORA:
                rank = square_rank(k, d, r, name)
                blocks = min(math.ceil(k / rank), math.ceil(d / rank)) if name == "rope" else 1
                cases.setdefault((args.tokens * blocks, rank, rank), f"{name} r={r}")
    base_macs = args.tokens * k0 * d0
    operands = {c: (torch.randn(c[0], c[1], device=args.device, dtype=DTYPES[args.dtype]),
                    torch.randn(c[2], c[1], device=args.device, dtype=DTYPES[args.dtype])) for c in cases}
    repeats = {c: max(1, min(64, round(base_macs / (c[0] * c[1] * c[2])))) for c in cases}
    best = {c: math.inf for c in cases}
    for _ in range(6):
        for c, (a, b) in operands.items():
            synchronize(args.device)
            start = time.perf_counter()
            for _ in range(repeats[c]):
                a @ b.T
            synchronize(args.device)
            best[c] = min(best[c], (time.perf_counter() - start) / repeats[c])
    rate = {c: c[0] * c[1] * c[2] / best[c] / 1e9 for c in cases}
    base = rate[(args.tokens, k0, d0)]
    parts = [f"{label}: r̂={c[1]}, {c[0]} rows → {rate[c] / base:.2f}" for c, label in cases.items() if label != "base"]
    return (f"GEMM throughput of M's matmul (rows × r̂ · r̂ × r̂) relative to the base matmul "
            f"({args.tokens}×{k0}·{k0}×{d0}, {base:.0f} GMAC/s; best of 6 interleaved rounds): " + "; ".join(parts)
            + ".  The FLOP floor assumes 1.00; a large matmul well below it (r̂ not a multiple of 8) pushes a "
            "MoRA ratio above its floor without any overhead in the adapter code.")


def merge_table(rows: list[dict]) -> tuple[list[str], list[str]]:
    lines = ["| layer (k→d) | r | compression | r̂ | delta_weight() s | merge() s |", "|---|---|---|---|---|---|"]
    slow = []
    for row in rows:
        lines.append(f"| {row['k']}→{row['d']} | {row['r']} | {row['method']} | {row['rank']} | "
                     f"{row['delta']:.3f} | {row['merge']:.3f} |")
        if max(row["delta"], row["merge"]) >= MERGE_TARGET_S:
            slow.append(f"{row['k']}→{row['d']} r={row['r']} {row['method']}")
    worst = max(max(r["delta"], r["merge"]) for r in rows)
    verdict = f"- merge target < {MERGE_TARGET_S} s each (slowest {worst:.3f} s): " + (
        "PASS" if not slow else "MISS (" + ", ".join(slow) + ")")
    return lines, [verdict]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--tokens", type=int, default=512, help="token batch (rows of x)")
    parser.add_argument("--repeats", type=int, default=12, help="measured round-robin rounds per shape")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    parser.add_argument("--min-repeats", type=int, default=5, help="measured rounds kept even past the budget")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="time budget of the speed table, split over the shapes by k·d (default 300)")
    parser.add_argument("--loss", choices=["grad", "sum", "sq"], default="grad",
                        help="grad: out.backward(dense G) (default); sum: out.sum(); sq: out.pow(2).mean()")
    parser.add_argument("--ranks", type=int, nargs="+", default=RANKS)
    parser.add_argument("--shapes", nargs="+", default=[f"{k}x{d}" for k, d in SHAPES], help="k x d, e.g. 4096x11008")
    parser.add_argument("--merge-repeats", type=int, default=5)
    parser.add_argument("--merge-warmup", type=int, default=1)
    parser.add_argument("--no-merge", action="store_true", help="skip the delta_weight/merge table")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="the layer's and the activations' dtype (default float32; adapters stay float32 on a half base)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]

    started = datetime.datetime.now().astimezone()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    t0 = time.perf_counter()
    results = []
    total_kd = sum(k * d for k, d in shapes)
    for k, d in shapes:
        print(f"timing {k}→{d} …", file=sys.stderr, flush=True)
        results.append(time_shape(k, d, args, budget_s=args.max_seconds * k * d / total_kd))
    note = gemm_note(args, shapes)
    merges = []
    if not args.no_merge:
        print("timing delta_weight / merge …", file=sys.stderr, flush=True)
        merges = time_merges(args)
    elapsed = time.perf_counter() - t0
    load_after = " ".join(f"{v:.2f}" for v in os.getloadavg())

    speed, verdicts, records = speed_table(results, args.ranks)
    report = ["# Adapter speed: one LLaMA-2-7B layer, forward+backward", ""]
    report += machine_header(args, started, load_before, load_after, elapsed, results) + [""]
    report += speed + ["", f"Verdicts (MoRA/LoRA within {TOLERANCE:.0%} of its FLOP floor):", ""] + verdicts
    report += ["", noise_note(results, records, args, load_before, load_after), "", note]
    if merges:
        m_lines, m_verdicts = merge_table(merges)
        report += ["", f"## Building ΔW and merging one layer ({args.dtype} base, median of "
                   f"{args.merge_repeats}; delta_weight under no_grad)", ""] + m_lines + [""] + m_verdicts
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
