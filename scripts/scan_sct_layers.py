"""Raw STS-B validation Spearman of every 3-layer cut of MiniLM-L6: which layers a student should keep.

Uses the GLUE STS-B validation pairs only (never the test set), mean pooling, max length 64; no training.

    OMP_NUM_THREADS=1 python scripts/scan_sct_layers.py --out scripts/results/sct_layer_scan.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT.parent / "shared" / "data" / "glue" / "stsb" / "validation.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=int, default=3, help="layers each cut keeps")
    parser.add_argument("--eval", default=str(VALIDATION), help="scored-pair file")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from plmkit.backbones import load_encoder
    from plmkit.compress.sct_train import load_eval_pairs
    from plmkit.embeddings import STSEvaluator
    from plmkit.layers import keep_layers

    backbone = load_encoder("minilm-l6")
    evaluator = STSEvaluator(load_eval_pairs(args.eval), backbone.tokenizer, "mean", max_length=64)
    depth = backbone.model.config.num_hidden_layers
    scores = {"all": round(100 * evaluator(backbone.model)["spearman"], 2)}
    for combo in itertools.combinations(range(depth), args.keep):
        name = ",".join(map(str, combo))
        scores[name] = round(100 * evaluator(keep_layers(copy.deepcopy(backbone.model), list(combo)))["spearman"], 2)
        print(f"layers {name}: {scores[name]}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"eval": args.eval, "spearman_x100": scores}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
