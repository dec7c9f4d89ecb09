"""``plmkit compress ...``: MPO compression, MPO depth scaling and dense export. Parse, call, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from plmkit.cliargs import Flags, add_job_parser, build_dataclass, quiet_libraries
from plmkit.jobs import run_job
from plmkit.report import format_table

TRAINING_DEFAULTS = {"output_dir": None, "epochs": 2, "batch_size": 32, "learning_rate": 1e-4,
                     "warmup_ratio": 0.1}
MODEL_ALIAS = {"backbone": ("--model",)}  # --backbone as in every other job; --model kept for earlier scripts


def _accuracy_rows(metrics: dict[str, Any], names: list[tuple[str, str]], key: str) -> list[list[Any]]:
    rows = []
    for label, name in names:
        if name in metrics:
            rows.append([label] + [metrics[name][split].get(key, float("nan")) for split in ("validation", "test")])
    return rows


# ------------------------------------------------------------------------------ mpo
def cmd_compress_mpo(args: argparse.Namespace) -> int:
    from plmkit.compress.jobs import CompressSetup, compress_mpo
    from plmkit.compress.mpo_model import MPOConfig

    if args.max_error is not None or args.max_bond is not None:
        args.budget = None  # another size rule was chosen; the default budget steps aside
    setup = build_dataclass(CompressSetup, args)
    config = build_dataclass(MPOConfig, args)
    label = f"{Path(setup.backbone).name}-{Path(setup.task).name if setup.task else 'encoder'}"
    return run_job(args, "compress", label, lambda trainer, run: compress_mpo(setup, config, trainer, run),
                   _print_mpo_summary)


def _print_mpo_summary(metrics: dict[str, Any], run_path: Path) -> None:
    params = metrics["parameters"]
    print("\n" + format_table(
        [["dense", params["dense"]["encoder"], params["dense"]["total"]],
         ["mpo", params["mpo"]["encoder"], params["mpo"]["total"]]],
        ["model", "encoder params", "total params"],
        title=f"MPO compression of {metrics['model']}: encoder at {params['encoder_fraction']:.1%}"))
    errors = [layer["relative_error"] for layer in metrics["layers"]]
    worst = max(metrics["layers"], key=lambda layer: layer["relative_error"])
    print(f"relative reconstruction error per layer: mean {sum(errors) / len(errors):.4f}, "
          f"max {worst['relative_error']:.4f} ({worst['name']})")
    if metrics.get("task"):
        key = metrics["metric"]
        names = [("dense fine-tuned", "dense"), ("mpo before fine-tuning", "before"), ("mpo after fine-tuning", "after")]
        print("\n" + format_table(_accuracy_rows(metrics, names, key), ["model", f"validation {key}", f"test {key}"],
                                  title=f"task {metrics['task']}"))
    lat = metrics["latency_ms"]
    factored = lat["mpo_factored"] if lat["mpo_factored"] is not None else (
        f"skipped (~{lat['mpo_factored_predicted_slowdown']:.0f}x dense)")
    print("\n" + format_table([[lat["dense"], lat["mpo_auto"], lat["mpo_dense"], factored]],
                              ["dense ms", "mpo auto ms", "mpo rebuild ms", "mpo factored ms"],
                              title=f"encoder forward, batch {lat['batch'][0]} x {lat['batch'][1]} tokens"))
    print(f"\nrun folder: {run_path}  (metrics.json, layer_errors.png, model/ (MPO), merged/ (plain Hugging Face), run.log)")


# ------------------------------------------------------------------------------ mpo-deep
def cmd_compress_deep(args: argparse.Namespace) -> int:
    from plmkit.compress.jobs import DeepSetup, deep_mpo
    from plmkit.compress.mpo_depth import DeepMPOConfig

    setup = build_dataclass(DeepSetup, args)
    config = build_dataclass(DeepMPOConfig, args)
    label = f"{Path(setup.backbone).name}-x{config.depth_multiplier}"
    return run_job(args, "compress-deep", label, lambda trainer, run: deep_mpo(setup, config, trainer, run),
                   _print_deep_summary)


def _print_deep_summary(metrics: dict[str, Any], run_path: Path) -> None:
    report = metrics["report"]
    shallow, deep = report["shallow_parameters"], report["deep_parameters"]
    print("\n" + format_table(
        [["shallow (pretrained)", report["pretrained_layers"], shallow["encoder"], shallow["total"]],
         ["deep MPO", report["deep_layers"], deep["encoder"], deep["total"]]],
        ["model", "layers", "encoder params", "total params"],
        title=f"MPO depth scaling of {metrics['model']}: {deep['total'] / shallow['total']:.2f}x the parameters"))
    dev = metrics["init_deviation"]
    print(f"sharing error (relative, mean/max): {report['sharing_error']['mean']:.3f}/{report['sharing_error']['max']:.3f};"
          f" at init the deep model's hidden states differ by {dev['vs_shallow_shared']:.4f} (relative) from the "
          f"shallow shared model and by {dev['vs_pretrained']:.4f} from the pretrained one")
    key = metrics["metric"]
    rows = _accuracy_rows(metrics, [("shallow dense, fine-tuned", "shallow"), ("deep MPO, fine-tuned", "deep")], key)
    print("\n" + format_table(rows, ["model", f"validation {key}", f"test {key}"], title=f"task {metrics['task']}"))
    print(f"\nrun folder: {run_path}  (metrics.json, model/, run.log)")


# ------------------------------------------------------------------------------ ode
def cmd_compress_ode(args: argparse.Namespace) -> int:
    from plmkit.compress.ode import ODEConfig
    from plmkit.compress.ode_job import ODESetup, ode_compress

    setup = build_dataclass(ODESetup, args)
    config = build_dataclass(ODEConfig, args)
    label = f"{Path(setup.backbone).name}-{Path(setup.task).name}-ode"
    return run_job(args, "compress-ode", label, lambda trainer, run: ode_compress(setup, config, trainer, run),
                   _print_ode_summary)


def _print_ode_summary(metrics: dict[str, Any], run_path: Path) -> None:
    key, batch = metrics["metric"], metrics["latency_batch"]
    rows = [[row["model"], row["steps"], row["evals"], row["latency_ms"], row["gflops"], row["validation"],
             row["test"]] for row in metrics["table"]]
    print("\n" + format_table(rows, ["model", "steps/layers", "F evals", "latency ms", "GFLOPs", f"validation {key}",
                                     f"test {key}"],
                              title=f"{metrics['model']} on {metrics['task']}: shared ODE model vs layer dropping "
                                    f"(forward of {batch[0]} x {batch[1]} tokens)"))
    print(f"\nrun folder: {run_path}  (metrics.json, ode_table.json, accuracy_latency.png, model/, run.log)")


def _register_ode(compress: argparse._SubParsersAction) -> None:
    from plmkit.compress.ode import ODEConfig
    from plmkit.compress.ode_job import ODESetup
    from plmkit.trainer import TrainerConfig

    add_job_parser(
        compress, "ode", cmd_compress_ode,
        [Flags(ODESetup, "model and task", aliases=MODEL_ALIAS),
         Flags(ODEConfig, "shared model and solver", exclude=("extra",)),
         # three models train here; --ode-lr-multipliers names the shared model's parameters
         Flags(TrainerConfig, "training", defaults=TRAINING_DEFAULTS, exclude=("lr_multipliers",))],
        help="parameter-shared encoder solved as an ODE: fewer, larger steps at inference",
        description="Fine-tune the dense model on --task, build a shared-layer (pre-LN, Euler-step) encoder from it, "
                    "train it to tolerate large steps (step counts drawn per batch, distillation from the dense "
                    "model), and compare steps -> latency, FLOPs, accuracy with dropping layers of the dense model.")


# ------------------------------------------------------------------------------ merge
def cmd_compress_merge(args: argparse.Namespace) -> int:
    from plmkit.compress.mpo_io import export_dense

    quiet_libraries()
    info = export_dense(args.folder, args.out)
    print(json.dumps(info) if args.json else f"wrote {info['path']} (transformers pipeline task: {info['pipeline']})")
    return 0


# ------------------------------------------------------------------------------ embed
EMBED_TRAINING_DEFAULTS = {"output_dir": None, "epochs": 1, "batch_size": 64, "learning_rate": 1e-4,
                           "warmup_ratio": 0.1}


def cmd_embed(args: argparse.Namespace) -> int:
    from plmkit.compress.sct import SCTConfig
    from plmkit.compress.sct_job import EmbedSetup, embed

    setup = build_dataclass(EmbedSetup, args)
    config = build_dataclass(SCTConfig, args)
    label = f"{Path(setup.backbone).name}-{'+'.join(setup.method_list())}"
    return run_job(args, "embed", label, lambda trainer, run: embed(setup, config, trainer, run), _print_embed_summary)


def _print_embed_summary(metrics: dict[str, Any], run_path: Path) -> None:
    from plmkit.compress.sct_job import summary_rows

    rows, header = summary_rows(metrics)
    print("\n" + format_table(rows, header, title=f"sentence encoders from {metrics['student']} (Spearman x100)"))
    print(f"\nrun folder: {run_path}  (<method>/model: SentenceTransformer folders, metrics.json, run.log)")


def _register_embed(sub: argparse._SubParsersAction) -> None:
    from plmkit.compress.sct import SCTConfig
    from plmkit.compress.sct_job import EmbedSetup
    from plmkit.trainer import TrainerConfig

    add_job_parser(
        sub, "embed", cmd_embed,
        [Flags(EmbedSetup, "student, teacher and data", aliases=MODEL_ALIAS), Flags(SCTConfig, "SCT"),
         Flags(TrainerConfig, "training", defaults=EMBED_TRAINING_DEFAULTS)],
        help="train a small sentence encoder (SCT, SimCSE or MSE distillation)",
        description="Train copies of the student (optionally cut to --layers) on --data with SCT (self-supervised "
                    "or distilled from --teacher) and the SimCSE / MSE-distillation baselines on the same budget, "
                    "score each on STS pairs and write each as a SentenceTransformer folder.")


# ------------------------------------------------------------------------------ parser
def register(sub: argparse._SubParsersAction) -> None:
    from plmkit.compress.jobs import CompressSetup, DeepSetup
    from plmkit.compress.mpo_depth import DeepMPOConfig
    from plmkit.compress.mpo_model import MPOConfig
    from plmkit.trainer import TrainerConfig

    compress = sub.add_parser("compress", help="MPO compression and MPO depth scaling").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    training = Flags(TrainerConfig, "training", defaults=TRAINING_DEFAULTS)
    add_job_parser(
        compress, "mpo", cmd_compress_mpo,
        [Flags(CompressSetup, "model and task", aliases=MODEL_ALIAS), Flags(MPOConfig, "MPO"), training],
        help="decompose linear layers into MPOs to meet a parameter budget",
        description="Fine-tune the dense model on --task (if given), decompose its encoder to --budget, "
                    "fine-tune it (all parameters with distillation by default; --trainable auxiliary for MPOP's "
                    "light fine-tuning), save the MPO model and its dense merge.")
    add_job_parser(
        compress, "mpo-deep", cmd_compress_deep,
        [Flags(DeepSetup, "model and task", aliases=MODEL_ALIAS), Flags(DeepMPOConfig, "depth scaling"), training],
        help="grow a deeper MPO encoder with shared central tensors",
        description="Build a depth_multiplier x L-layer encoder whose layers share MPO central tensors, "
                    "fine-tune it on --task and compare with the shallow dense model.")
    _register_ode(compress)

    merge = compress.add_parser("merge", help="write a saved MPO model as a plain Hugging Face folder")
    merge.add_argument("folder", help="a model folder written by `plmkit compress mpo` or `mpo-deep`")
    merge.add_argument("--out", required=True, help="output folder (save_pretrained format + tokenizer)")
    merge.add_argument("--json", action="store_true", help="print the result as JSON")
    merge.set_defaults(func=cmd_compress_merge)
    _register_embed(sub)
