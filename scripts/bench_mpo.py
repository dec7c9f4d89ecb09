"""MPO benchmarks: layer speed and error vs nn.Linear and tensorly-torch; compressed MiniLM accuracy.

Part ``layers``: for 768x3072 and 1024x4096 weights, MPOLinear (auto path, and each path forced) vs
dense ``nn.Linear`` and ``tltorch.FactorizedLinear(factorization="blocktt")`` (both its
``factorized`` and ``reconstructed`` forwards) at equal parameter counts: forward+backward time for
a few token counts, and the relative reconstruction error of the same weight. The 768x3072 weight
is MPNet's first feed-forward matrix when that asset is cached, the 1024x4096 one a synthetic matrix
with a power-law spectrum. tltorch is optional (``pip install tensorly-torch==0.5.0 --no-deps``).

Part ``quality``: MiniLM compressed to 50 % and 25 % of its encoder parameters, accuracy after
fine-tuning on rotten-tomatoes and GLUE SST-2 (../shared/data/glue/sst2), against the uncompressed
model fine-tuned the same way. Flow per task: fine-tune dense (E epochs) -> for each budget: compress
the fine-tuned model (MPOP), evaluate, fine-tune again (E epochs, all parameters) -> evaluate.

Part ``deep``: MPO depth scaling of MiniLM (2x depth, shared central tensors) on rotten-tomatoes.

    python scripts/bench_mpo.py --part layers
    python scripts/bench_mpo.py --part quality --train-samples 2000 --epochs 1 --max-length 64

Prints tables and writes JSON (``--out``). Timings are wall-clock medians on this machine; no GPU
numbers are produced where there is no GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((768, 3072), (1024, 4096))
FRACTIONS = (0.1, 0.25, 0.5)
TOKENS = (16, 1024)
DEVICE = torch.device("cpu")  # --device; layer timings run there
SKIP_FACTORED = 50.0  # do not time the forced factored path when it needs this many times the dense flops


# ------------------------------------------------------------------------------ layers
def _weight(rows: int, cols: int) -> tuple[torch.Tensor, str]:
    """An (out, in) nn.Linear weight: a real pretrained one when available, else a power-law spectrum."""
    if (rows, cols) == (3072, 768):
        try:
            from plmkit.backbones import load_encoder
            from plmkit.inject import find_linear_targets, input_output_weight

            model = load_encoder("mpnet-base").model
            name, linear = next((n, m) for n, m in find_linear_targets(model) if "intermediate" in n)
            return input_output_weight(linear).T.detach().clone(), f"mpnet-base {name}"
        except Exception as error:  # asset not cached / offline: fall back, and say so
            print(f"(mpnet-base unavailable: {type(error).__name__}; using a synthetic 768x3072 matrix)")
    generator = torch.Generator().manual_seed(0)
    k = min(rows, cols)
    u = torch.linalg.qr(torch.randn(rows, k, generator=generator))[0]
    v = torch.linalg.qr(torch.randn(cols, k, generator=generator))[0]
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -0.5
    # (rows, k) diag(k) (k, cols)
    return (u @ torch.diag(s) @ v.T).contiguous(), "synthetic, sigma_k ~ k^-1/2"


def _time_all(layers: dict[str, nn.Module], tokens: int, features: int, rounds: int = 7,
              slow_s: float = 5.0) -> dict[str, float]:
    """Median seconds of forward + backward for ``tokens`` rows, for each layer.

    The layers take turns, one call each per round (after one warm-up call each), so that a slow
    spell of a shared machine hits every contender alike instead of whichever ran at that moment. A
    layer whose call takes longer than ``slow_s`` is timed in one round only: the point is made
    without minutes of waiting.
    """
    x = torch.randn(tokens, features, device=DEVICE, requires_grad=True)
    times: dict[str, list[float]] = {name: [] for name in layers}

    def call(layer: nn.Module) -> float:
        layer.zero_grad(set_to_none=True)
        _sync()
        started = time.perf_counter()
        layer(x).square().mean().backward()
        _sync()
        return time.perf_counter() - started

    slow = {name for name, layer in layers.items() if call(layer) > slow_s}
    for round_ in range(rounds):
        for name, layer in layers.items():
            if name not in slow or round_ == 0:
                times[name].append(call(layer))
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def _time_inference(layer: nn.Module, tokens: int, features: int, repeats: int = 5) -> float:
    """Median seconds of a no-grad forward (after one warm-up: MPOLinear caches its rebuilt weight)."""
    x = torch.randn(tokens, features, device=DEVICE)
    layer(x)
    times = []
    for _ in range(repeats):
        _sync()
        started = time.perf_counter()
        layer(x)
        _sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _sync() -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _tltorch_layers(linear: nn.Linear, shape_in, shape_out, rank):
    try:
        import tltorch
    except ImportError:
        return None
    made = {}
    for impl in ("factorized", "reconstructed"):
        made[impl] = tltorch.FactorizedLinear.from_linear(
            linear, rank=rank, auto_tensorize=False, in_tensorized_features=shape_in,
            out_tensorized_features=shape_out, factorization="blocktt", implementation=impl)
    return made


def _tl_error(layer, weight: torch.Tensor) -> float:
    with torch.no_grad():
        rebuilt = layer.weight.to_matrix().reshape(weight.shape)
    return float((rebuilt - weight).norm() / weight.norm())


def bench_layers(tokens=TOKENS, fractions=FRACTIONS) -> list[dict]:
    from plmkit.compress.mpo import factorize
    from plmkit.compress.mpo_linear import MPOLinear

    rows = []
    for features_in, features_out in SHAPES:
        weight, source = _weight(features_out, features_in)
        linear = nn.Linear(features_in, features_out)
        with torch.no_grad():
            linear.weight.copy_(weight)
        in_f, out_f = factorize(features_in), factorize(features_out)
        for fraction in fractions:
            tl = _tltorch_layers(linear, in_f, out_f, fraction)
            budget = sum(p.numel() for p in tl["factorized"].weight.parameters()) if tl else int(
                fraction * weight.numel())
            ours = MPOLinear.from_linear(linear, in_f, out_f, param_budget=budget)
            error = float((ours.merged_weight() - weight).norm() / weight.norm())
            ours.to(DEVICE)
            contenders = {"nn.Linear": copy.deepcopy(linear).to(DEVICE), "mpo auto": ours}
            tl_error = _tl_error(tl["factorized"], weight) if tl else None
            if tl:
                contenders.update({"tltorch factorized": tl["factorized"].to(DEVICE),
                                   "tltorch reconstructed": tl["reconstructed"].to(DEVICE)})
                # The smallest MPO whose error does not exceed tltorch's: "at equal error".
                equal = MPOLinear.from_linear(linear, in_f, out_f, max_error=tl_error * float(weight.norm()))
                contenders["mpo auto, equal error"] = equal.to(DEVICE)
            for n in tokens:
                forced = {}
                for mode in ("dense", "factored"):
                    layer = copy.deepcopy(ours)
                    layer.forward_mode = mode
                    cost = layer.flops(n)
                    if mode == "dense" or cost["factored"] <= SKIP_FACTORED * (cost["gemm"] + cost["rebuild"]):
                        forced[f"mpo {mode}"] = layer  # else predicted far slower: not timed
                timings = _time_all({**contenders, **forced}, n, features_in)
                timings.setdefault("mpo factored", None)
                best_tl = min((timings[k] for k in ("tltorch factorized", "tltorch reconstructed") if k in timings),
                              default=None)
                inference = {name: 1e3 * _time_inference(layer, n, features_in) for name, layer in contenders.items()
                             if name != "tltorch factorized" or n <= 64}
                rows.append({
                    "shape": f"{features_in}x{features_out}", "weight": source, "fraction": fraction,
                    "params_mpo": sum(c.numel() for c in ours.cores), "params_tltorch": budget if tl else None,
                    "params_mpo_equal_error": sum(c.numel() for c in equal.cores) if tl else None,
                    "error_mpo": error, "error_tltorch": tl_error,
                    "tokens": n, "auto_path": ours.path_for(n),
                    "ms": {k: None if v is None else 1e3 * v for k, v in timings.items()},
                    "equal_error_time_ratio_vs_best_tltorch": (timings["mpo auto, equal error"] / best_tl
                                                               if best_tl else None),
                    "flops": ours.flops(n), "inference_ms": inference,
                })
                print(_layer_line(rows[-1]), flush=True)
    return rows


def _layer_line(row: dict) -> str:
    ms = row["ms"]
    tl = (f" tl-fact {ms['tltorch factorized']:.1f} tl-rec {ms['tltorch reconstructed']:.1f}"
          if "tltorch factorized" in ms else " (tltorch absent)")
    return (f"{row['shape']} {row['fraction']:.2f} N={row['tokens']}: dense {ms['nn.Linear']:.1f} "
            f"mpo-auto({row['auto_path']}) {ms['mpo auto']:.1f}{tl} ms")


# ------------------------------------------------------------------------------ quality
def _task(spec: str, args) -> object:
    from plmkit.tasks import load_task

    return load_task(spec, seed=0, max_train_samples=args.train_samples, max_eval_samples=args.eval_samples)


def bench_quality(args) -> list[dict]:
    from plmkit.backbones import load_encoder
    from plmkit.compress.distill import distillation_loss
    from plmkit.compress.jobs import finetune_classifier
    from plmkit.compress.mpo_model import MPOConfig, attach_mpo, count_parameters
    from plmkit.models import build_classifier
    from plmkit.textclf import TaskData
    from plmkit.trainer import TrainerConfig, seed_everything

    trainer = TrainerConfig(epochs=args.epochs, batch_size=32, learning_rate=args.learning_rate, warmup_ratio=0.1,
                            progress=False, save_checkpoints=False, seed=args.seed)
    variants = [(float(b), "all") for b in args.budgets.split(",")]
    if args.light:
        variants.append((variants[0][0], "auxiliary"))
    rows = []
    for spec in args.tasks.split(","):
        seed_everything(args.seed)
        task = _task(spec, args)
        backbone = load_encoder(args.model)
        data = TaskData(task, backbone.tokenizer, args.max_length)
        dense = build_classifier(backbone.model, task.num_labels, pooling="cls")
        out = Path(args.output_dir) / Path(spec).name
        record = finetune_classifier(dense, data, trainer, str(out / "dense"))
        dense_params = count_parameters(dense)
        base = {"task": task.name, "train": len(task.train), "validation": len(task.validation), "test": len(task.test)}
        rows.append({**base, "model": "dense", "encoder_fraction": 1.0, "after": _accuracy(record),
                     "train_s": record["train"]["train_time_s"], "parameters": dense_params})
        print(rows[-1], flush=True)
        for budget, trainable in variants:
            seed_everything(args.seed)
            model = copy.deepcopy(dense)
            handle = attach_mpo(model, MPOConfig(budget=budget, trainable=trainable))
            model.head.requires_grad_(True)
            before = _scores(data, model)
            teacher = args.distill or args.distill_hidden
            loss_fn = (distillation_loss(copy.deepcopy(dense), args.distill, hidden_weight=args.distill_hidden)
                       if teacher else None)
            tuning = replace(trainer, learning_rate=args.mpo_learning_rate or args.learning_rate)
            record = finetune_classifier(model, data, tuning, str(out / f"mpo{budget}-{trainable}"), loss_fn)
            errors = [r["relative_error"] for r in handle.report]
            params = count_parameters(model)
            rows.append({**base, "model": f"mpo {budget:.0%}" + (" aux-only" if trainable != "all" else ""),
                         "budget": budget, "trainable": trainable, "before": before, "after": _accuracy(record),
                         "train_s": record["train"]["train_time_s"],
                         "encoder_fraction": params["encoder"] / dense_params["encoder"], "parameters": params,
                         "mean_relative_error": sum(errors) / len(errors), "max_relative_error": max(errors)})
            print(rows[-1], flush=True)
    return rows


def _accuracy(record: dict) -> dict:
    return {split: record[split]["accuracy"] for split in ("validation", "test")}


def _scores(data, model) -> dict:
    model.float()
    return {"validation": data.evaluate(model, "validation")["accuracy"], "test": data.evaluate(model, "test")["accuracy"]}


def bench_deep(args) -> list[dict]:
    from plmkit.compress.jobs import DeepSetup, deep_mpo
    from plmkit.compress.mpo_depth import DeepMPOConfig
    from plmkit.runs import RunFolder
    from plmkit.trainer import TrainerConfig

    rows = []
    for groups in (int(g) for g in args.deep_groups.split(",")):
        setup = DeepSetup(backbone=args.model, task=args.deep_task, baseline=False, max_length=args.max_length,
                          max_train_samples=args.train_samples, max_eval_samples=args.eval_samples)
        config = DeepMPOConfig(depth_multiplier=args.depth_multiplier, num_groups=groups)
        run = RunFolder(Path(args.output_dir) / f"deep-g{groups}")
        trainer = TrainerConfig(output_dir=str(run.path), epochs=args.epochs, batch_size=32,
                                learning_rate=args.learning_rate, warmup_ratio=0.1, progress=False,
                                save_checkpoints=False, seed=args.seed)
        metrics = deep_mpo(setup, config, trainer, run)
        report = metrics["report"]
        rows.append({"task": metrics["task"], "groups": groups, "layers": report["deep_layers"],
                     "parameters": report["deep_parameters"], "shallow_parameters": report["shallow_parameters"],
                     "sharing_error": report["sharing_error"], "init_deviation": metrics["init_deviation"],
                     "after": {s: metrics["deep"][s]["accuracy"] for s in ("validation", "test")},
                     "train_s": metrics["deep"]["train"]["train_time_s"]})
        print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------ report
def _or_nan(value):
    return math.nan if value is None else value


def print_tables(results: dict) -> None:
    from plmkit.report import format_table

    if results.get("layers"):
        headers = ["shape", "params", "N", "err mpo", "err tltorch", "dense ms", "mpo auto ms", "path",
                   "mpo rebuild ms", "mpo factored ms", "tl factorized ms", "tl reconstructed ms",
                   "params mpo@tl err", "mpo@tl err ms", "mpo@tl err / best tl"]
        table = []
        for r in results["layers"]:
            ms = r["ms"]
            table.append([r["shape"], r["params_mpo"], r["tokens"], r["error_mpo"],
                          r["error_tltorch"] if r["error_tltorch"] is not None else math.nan, ms["nn.Linear"],
                          ms["mpo auto"], r["auto_path"], ms["mpo dense"], _or_nan(ms["mpo factored"]),
                          ms.get("tltorch factorized", math.nan), ms.get("tltorch reconstructed", math.nan),
                          r.get("params_mpo_equal_error") or math.nan, ms.get("mpo auto, equal error", math.nan),
                          _or_nan(r.get("equal_error_time_ratio_vs_best_tltorch"))])
        print(format_table(table, headers, title=f"forward+backward per call ({DEVICE}), ms; relative error of the weight"))
        names = ["nn.Linear", "mpo auto", "tltorch reconstructed", "tltorch factorized"]
        table = [[r["shape"], r["params_mpo"], r["tokens"]] + [r["inference_ms"].get(k, math.nan) for k in names]
                 for r in results["layers"] if "inference_ms" in r]
        print(format_table(table, ["shape", "params", "N"] + [f"{k} ms" for k in names],
                           title=f"inference: no-grad forward per call ({DEVICE}), ms"))
    if results.get("quality"):
        table = [[r["task"], r["model"], r["encoder_fraction"], r.get("before", {}).get("validation", math.nan),
                  r["after"]["validation"], r["after"]["test"], r["train_s"]] for r in results["quality"]]
        print(format_table(table, ["task", "model", "encoder", "val before FT", "val after FT", "test after FT",
                                   "train s"], title="MiniLM, accuracy"))
    if results.get("deep"):
        table = [[r["task"], r["groups"], r["layers"], r["parameters"]["total"], r["shallow_parameters"]["total"],
                  r["sharing_error"]["mean"], r["init_deviation"]["vs_shallow_shared"], r["after"]["validation"],
                  r["after"]["test"]] for r in results["deep"]]
        print(format_table(table, ["task", "groups", "layers", "params", "shallow params", "sharing err",
                                   "init gap", "val acc", "test acc"], title="MPO depth scaling"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the layer timings run (default: cuda when available)")
    parser.add_argument("--part", default="layers", choices=("layers", "quality", "deep", "all", "print"))
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_mpo.json"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--tasks", default=f"rotten-tomatoes,{ROOT.parent / 'shared' / 'data' / 'glue' / 'sst2'}")
    parser.add_argument("--budgets", default="0.5,0.25")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--mpo-learning-rate", type=float, default=3e-4,
                        help="learning rate when fine-tuning compressed MPO models (the job's default)")
    parser.add_argument("--distill", type=float, default=0.5, help="distillation weight when fine-tuning MPO models")
    parser.add_argument("--distill-hidden", type=float, default=0.0,
                        help="weight of hidden-state distillation when fine-tuning MPO models")
    parser.add_argument("--light", action="store_true", help="add an auxiliary-tensors-only row (MPOP light)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--deep-task", default="rotten-tomatoes")
    parser.add_argument("--deep-groups", default="1")
    parser.add_argument("--depth-multiplier", type=int, default=2)
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "bench_mpo"))
    args = parser.parse_args()

    from plmkit.cliargs import quiet_libraries

    quiet_libraries()
    global DEVICE
    DEVICE = torch.device(args.device)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.part in ("layers", "all"):
        try:
            import tltorch  # noqa: F401
        except ImportError:
            print("tensorly-torch is not installed: the tltorch columns are skipped "
                  "(pip install tensorly-torch==0.5.0 --no-deps)", file=sys.stderr)
        results["layers"] = bench_layers()
    if args.part in ("quality", "all"):
        results["quality"] = bench_quality(args)
    if args.part in ("deep", "all"):
        results["deep"] = bench_deep(args)
    results.setdefault("environment", {}).update({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "layers_device": str(DEVICE),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        f"command_{args.part}": " ".join(sys.argv)})
    from plmkit.io import atomic_write_json

    atomic_write_json(out, results)
    print_tables(results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
