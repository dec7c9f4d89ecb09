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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="SentenceTransformer folders")
    parser.add_argument("--eval", required=True, help="comma-separated scored-pair files or 'lee'")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", default=None, help="write the scores as JSON here")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    from plmkit.compress.sct_train import load_eval_pairs
    from plmkit.embeddings import EmbeddingError, STSEvaluator, sentence_transformer_pooling

    sets = [s.strip() for s in args.eval.split(",") if s.strip()]
    scores = {}
    for folder in args.models:
        model = SentenceTransformer(folder, device="cpu")
        hf = model[0].auto_model
        try:
            pooling = sentence_transformer_pooling(model, folder)
        except EmbeddingError as error:
            raise SystemExit(f"error: {error}") from None
        scores[folder] = {s: 100 * STSEvaluator(load_eval_pairs(s), model.tokenizer, pooling,
                                                max_length=args.max_length)(hf)["spearman"] for s in sets}
        print(folder, {Path(s).name: round(v, 2) for s, v in scores[folder].items()}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
