"""``plmkit compress ...``: MPO compression, MPO depth scaling and dense export. Parse, call, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from plmkit.cliargs import EPILOG, add_common, add_dataclass_arguments, build_dataclass, quiet_libraries
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


# ------------------------------------------------------------------------------ merge
def cmd_compress_merge(args: argparse.Namespace) -> int:
    from plmkit.compress.mpo_io import export_dense

    quiet_libraries()
    info = export_dense(args.folder, args.out)
    print(json.dumps(info) if args.json else f"wrote {info['path']} (transformers pipeline task: {info['pipeline']})")
    return 0


# ------------------------------------------------------------------------------ parser
def register(sub: argparse._SubParsersAction) -> None:
    from plmkit.compress.jobs import CompressSetup, DeepSetup
    from plmkit.compress.mpo_depth import DeepMPOConfig
    from plmkit.compress.mpo_model import MPOConfig
    from plmkit.trainer import TrainerConfig

    compress = sub.add_parser("compress", help="MPO compression and MPO depth scaling").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    mpo = compress.add_parser(
        "mpo", epilog=EPILOG, help="decompose linear layers into MPOs to meet a parameter budget",
        description="Fine-tune the dense model on --task (if given), decompose its encoder to --budget, "
                    "fine-tune it (all parameters with distillation by default; --trainable auxiliary for MPOP's "
                    "light fine-tuning), save the MPO model and its dense merge.")
    add_common(mpo)
    add_dataclass_arguments(mpo, CompressSetup, title="model and task", aliases=MODEL_ALIAS)
    add_dataclass_arguments(mpo, MPOConfig, title="MPO")
    add_dataclass_arguments(mpo, TrainerConfig, title="training", defaults=TRAINING_DEFAULTS)
    mpo.set_defaults(func=cmd_compress_mpo, _parser=mpo)

    deep = compress.add_parser(
        "mpo-deep", epilog=EPILOG, help="grow a deeper MPO encoder with shared central tensors",
        description="Build a depth_multiplier x L-layer encoder whose layers share MPO central tensors, "
                    "fine-tune it on --task and compare with the shallow dense model.")
    add_common(deep)
    add_dataclass_arguments(deep, DeepSetup, title="model and task", aliases=MODEL_ALIAS)
    add_dataclass_arguments(deep, DeepMPOConfig, title="depth scaling")
    add_dataclass_arguments(deep, TrainerConfig, title="training", defaults=TRAINING_DEFAULTS)
    deep.set_defaults(func=cmd_compress_deep, _parser=deep)

    merge = compress.add_parser("merge", help="write a saved MPO model as a plain Hugging Face folder")
    merge.add_argument("folder", help="a model folder written by `plmkit compress mpo` or `mpo-deep`")
    merge.add_argument("--out", required=True, help="output folder (save_pretrained format + tokenizer)")
    merge.add_argument("--json", action="store_true", help="print the result as JSON")
    merge.set_defaults(func=cmd_compress_merge)
