"""What reading a fine-tuned post-LN encoder as an ODE costs before any training.

Loads a fine-tuned dense classifier from a ``bench_ode.py`` dense cache (``--dense-cache`` file), builds
the shared ODE model from it in each requested way (field form, blocks, source layers) and scores it
untrained at each step count, beside the dense model. Nothing is trained: the table says how far from
the dense model each reading starts, which the step-robust training then has to win back.

    python scripts/ode_conversion.py --task rotten-tomatoes \
        --dense-cache /tmp/plmkit-bench-ode-dense-full/rotten-tomatoes-minilm-l6-2000-48-2-32-0.0001-42.safetensors \
        --train-samples 2000 --eval-samples 0 --max-length 48 \
        --variants prenorm:6:0,1,2,3,4,5 postnorm:6:0,1,2,3,4,5 prenorm:3:0,2,4 postnorm:3:0,2,4 \
        --out scripts/results/ode_conversion_rt.json

A variant is ``form:blocks:layers`` (one source layer per block; ``form`` is ``prenorm`` or ``postnorm``,
see ``plmkit.compress.ode``). The task data must be loaded with the settings the cache was made with: a
cache that records another backbone, task, rows or length is refused.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--task", default="rotten-tomatoes")
    parser.add_argument("--dense-cache", required=True, help="a fine-tuned dense weights file made by bench_ode.py")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--variants", nargs="+", default=["prenorm:3:0,2,4", "postnorm:3:0,2,4"])
    parser.add_argument("--steps", default="6,3,2")
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    from safetensors.torch import load_file

    from plmkit.backbones import load_encoder
    from plmkit.cliargs import quiet_libraries
    from plmkit.compress.ode import ODEClassifier, ODEConfig
    from plmkit.compress.ode_build import build_ode_encoder
    from plmkit.compress.ode_job import ODESetup, dense_data_settings, read_dense_settings
    from plmkit.errors import ConfigError
    from plmkit.models import build_classifier
    from plmkit.report import format_table
    from plmkit.textclf import TaskData

    quiet_libraries()
    if not Path(args.dense_cache).is_file():
        raise SystemExit(f"--dense-cache {args.dense_cache} is not a file; run scripts/bench_ode.py with "
                         "--dense-cache FOLDER first (it writes one file per task and settings)")
    setup = ODESetup(backbone=args.backbone, task=args.task, max_train_samples=args.train_samples,
                     max_eval_samples=args.eval_samples, max_length=args.max_length)
    task = setup.load(setup.task)
    backbone = load_encoder(setup.backbone)
    data = TaskData(task, backbone.tokenizer, setup.max_length, backbone.model.config)
    expected = json.loads(json.dumps(dense_data_settings(setup, data, backbone.name)))  # as the cache stores it
    stored = read_dense_settings(Path(args.dense_cache))
    differ = [k for k in expected if not stored or stored.get(k) != expected[k]]
    if differ:
        raise SystemExit(f"--dense-cache {args.dense_cache} was made with other {', '.join(differ)}; pass the "
                         "--backbone, --task, --train-samples, --eval-samples and --max-length it was made with")
    dense = build_classifier(backbone.model, task.num_labels, pooling=setup.pooling)
    dense.load_state_dict(load_file(args.dense_cache))
    dense.eval()
    metric = task.metric
    rows = [{"model": "dense", "steps": None, args.split: data.evaluate(dense, args.split)[metric]}]
    for variant in args.variants:
        try:
            form, blocks, layers = variant.split(":")
            config = ODEConfig(form=form, num_blocks=int(blocks), init="layer", init_layer=layers)
        except ValueError as error:
            raise SystemExit(f"variant {variant!r} is not form:blocks:layers (e.g. postnorm:3:0,2,4)") from error
        except ConfigError as error:
            raise SystemExit(f"variant {variant!r}: {error}") from error
        model = ODEClassifier(build_ode_encoder(dense.encoder, config), copy.deepcopy(dense.head)).eval()
        for steps in (int(n) for n in args.steps.split(",")):
            model.set_steps(steps)
            rows.append({"model": variant, "steps": steps, args.split: data.evaluate(model, args.split)[metric]})
    print(format_table([[r["model"], r["steps"] or "-", f"{r[args.split]:.3f}"] for r in rows],
                       ["model (form:blocks:layers)", "steps", f"{args.split} {metric}, untrained"],
                       title=f"{task.name}: the ODE reading of the fine-tuned dense model, before training"))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "metric": metric, "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
