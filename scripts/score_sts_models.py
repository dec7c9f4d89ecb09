"""Score saved sentence-encoder folders (``plmkit embed`` outputs) on STS pair sets, as ``plmkit embed`` does.

Each folder is loaded with ``sentence_transformers.SentenceTransformer`` (how users consume it) and scored
with the same evaluator as the job (the folder's own pooling, Spearman x100 of cosine similarity, max length 64).

    python scripts/score_sts_models.py runs/bench/sct-distill/model runs/bench/mse/model \\
        --eval ../shared/data/glue/stsb/validation.jsonl --out scores.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_ST_MODES = {"mean": "mean", "cls": "cls", "lasttoken": "last"}  # sentence-transformers name -> ours
_ST_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
             "pooling_mode_lasttoken": "lasttoken"}  # the older Pooling configs' flags


def folder_pooling(model, folder: str) -> str:
    """The pooling the folder's Pooling module applies, as ``plmkit.models.pool`` names it; else a clear exit."""
    config = model[1].get_config_dict() if len(model) > 1 else {}
    mode = config.get("pooling_mode") or next((m for flag, m in _ST_FLAGS.items() if config.get(flag)), None)
    if mode not in _ST_MODES:
        raise SystemExit(f"error: {folder}: pooling {mode or config!r} is not one of {sorted(_ST_MODES)}; "
                         "fix: score it with sentence-transformers directly")
    return _ST_MODES[mode]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="SentenceTransformer folders")
    parser.add_argument("--eval", required=True, help="comma-separated scored-pair files or 'lee'")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", default=None, help="write the scores as JSON here")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    from plmkit.compress.sct_train import load_eval_pairs
    from plmkit.embeddings import STSEvaluator

    sets = [s.strip() for s in args.eval.split(",") if s.strip()]
    scores = {}
    for folder in args.models:
        model = SentenceTransformer(folder, device="cpu")
        hf = model[0].auto_model
        pooling = folder_pooling(model, folder)
        scores[folder] = {s: 100 * STSEvaluator(load_eval_pairs(s), model.tokenizer, pooling,
                                                max_length=args.max_length)(hf)["spearman"] for s in sets}
        print(folder, {Path(s).name: round(v, 2) for s, v in scores[folder].items()}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
