"""Stage-2 training throughput and peak memory: plmkit's fusion and ScaLearn vs the `adapters` package.

Every measurement runs in its own process (same code path for both sides): a BERT-shaped encoder with
random weights, N random frozen source adapters (reduction 16), a new classification head, and
training steps on random token batches. plmkit trains through its own trainer (DeepSpeed engine);
the peer, `adapters==1.3.0` (which pins transformers 4.57), runs AdapterFusion from its own virtual
environment with a plain AdamW loop.

    python scripts/bench_transfer.py --preset cpu          # small shapes, ratios (2-core CPU)
    python scripts/bench_transfer.py --preset gpu          # BERT-base, batch 32 x 128, bf16
    python scripts/bench_transfer.py --preset gpu --sources 8 --skip-compile   # without the compiled row

The "ours scalearn+compile" column trains ScaLearn with the trainer's ``compile=True`` (torch.compile
before the DeepSpeed engine); compilation happens in the first (warm-up) step, so the timed steps
measure the compiled graph. The target is >= 5x the peer's AdapterFusion throughput at N = 8.

Peer environment (made once, ignored by git):
    python -m venv .bench/adapters-venv
    .bench/adapters-venv/bin/pip install torch==2.13.0 adapters==1.3.0

Throughput: batch / median step time after the warm-up steps. Memory ("MB" columns): the peak above
what was resident (CPU) or allocated (GPU) just before the first training step — optimiser state,
activations and workspace, without the model weights or the two environments' import footprints;
the absolute peak is in the JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    "cpu": {"hidden": 256, "layers": 4, "heads": 4, "batch": 8, "seq": 64, "precision": "fp32", "device": "cpu"},
    "gpu": {"hidden": 768, "layers": 12, "heads": 12, "batch": 32, "seq": 128, "precision": "bf16", "device": "cuda"},
}
DEFAULT_PEER = Path(__file__).resolve().parents[1] / ".bench" / "adapters-venv" / "bin" / "python"


# ----------------------------------------------------------------------------- measuring
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_mb()


def _peak(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _bert_config(shape: dict):
    from transformers import BertConfig

    return BertConfig(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                      num_attention_heads=shape["heads"], intermediate_size=4 * shape["hidden"],
                      vocab_size=30522, max_position_embeddings=512)


def _batch(shape: dict, device: str, step: int):
    import torch

    g = torch.Generator().manual_seed(step)
    ids = torch.randint(1000, 30000, (shape["batch"], shape["seq"]), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 2, (shape["batch"],), generator=g).to(device)}


class _Clock:
    """Time stamps at the start of every step; peak memory counted from before the first step.

    Throughput uses the median step time after the warm-up steps (robust to a noisy neighbour);
    memory is the peak above the resident size (or GPU allocation) just before training starts,
    i.e. optimiser state + activations + workspace, not the model weights or library imports.
    """

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device = warmup, device
        self.stamps: list[float] = []
        self.baseline: float | None = None

    def tick(self) -> None:
        if not self.stamps:
            self.baseline = _reset_peak(self.device)
        self._sync()
        self.stamps.append(time.perf_counter())

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def result(self, batch: int) -> dict:
        self.tick()
        later = self.stamps[self.warmup:]
        steps = sorted(b - a for a, b in zip(later, later[1:], strict=False))
        median = steps[len(steps) // 2]
        peak = _peak(self.device)
        return {"samples_per_s": batch / median, "step_s": median, "peak_mb": peak,
                "step_mb": peak - self.baseline}


# ----------------------------------------------------------------------------- workers
def worker_ours(method: str, n: int, shape: dict, steps: int, warmup: int, compile: bool = False) -> dict:
    import tempfile

    import torch

    from plmkit.models import build_classifier
    from plmkit.mtl.adapters import attach_adapters, save_adapter
    from plmkit.mtl.transfer import Composition, SourceRef, attach_transfer
    from plmkit.textclf import classification_loss
    from plmkit.trainer import Trainer, TrainerConfig

    device = shape["device"]
    from transformers import BertModel

    torch.manual_seed(0)
    encoder = BertModel(_bert_config(shape), add_pooling_layer=False)
    tmp = Path(tempfile.mkdtemp())
    refs = []
    for i in range(n):
        probe = BertModel(_bert_config(shape), add_pooling_layer=False)
        refs.append(SourceRef(f"s{i}", str(save_adapter(tmp / f"s{i}", attach_adapters(probe)))))
        del probe
    attach_transfer(encoder, Composition(method=method, sources=refs))
    model = build_classifier(encoder, 2).to(device)
    clock = _Clock(warmup, device)
    data = [_batch(shape, "cpu", s) for s in range(steps + warmup)]

    def loss_fn(m, batch):
        clock.tick()
        return classification_loss(m, batch)

    config = TrainerConfig(output_dir=str(tmp / "run"), epochs=1, batch_size=1, learning_rate=1e-4,
                           precision=shape["precision"], save_checkpoints=False, progress=False,
                           compile=compile)
    Trainer(model, loss_fn, data, config, collate_fn=lambda items: items[0]).train()
    return clock.result(shape["batch"])


def worker_peer(method: str, n: int, shape: dict, steps: int, warmup: int) -> dict:
    import adapters
    import torch
    from adapters.composition import Fuse
    from transformers import BertModel

    device = shape["device"]
    torch.manual_seed(0)
    encoder = BertModel(_bert_config(shape), add_pooling_layer=False)
    adapters.init(encoder)
    names = [f"s{i}" for i in range(n)]
    for name in names:
        encoder.add_adapter(name, config="seq_bn")
    encoder.add_adapter_fusion(Fuse(*names), config="dynamic")
    encoder.train_adapter_fusion(Fuse(*names))
    head = torch.nn.Linear(shape["hidden"], 2)
    encoder.to(device)
    head.to(device)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    dtype = torch.bfloat16 if shape["precision"] == "bf16" else None
    clock = _Clock(warmup, device)
    for step in range(steps + warmup):
        batch = _batch(shape, device, step)
        clock.tick()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            logits = head(hidden.mean(1))
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return clock.result(shape["batch"])


# ----------------------------------------------------------------------------- driver
def _run_worker(python: str, side: str, method: str, n: int, args: argparse.Namespace,
                compile: bool = False) -> dict:
    command = [python, __file__, "--worker", side, "--method", method, "--n", str(n), "--preset", args.preset,
               "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--compile"] if compile else [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])} if side == "ours" else None
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _compiled_cells(row: dict) -> tuple[str, ...]:
    """Throughput and speed ratio of the compiled ScaLearn run ("-" when skipped, "error" when it failed)."""
    compiled = row.get("ours_scalearn_compiled")
    if compiled is None:
        return ("-", "-")
    if "samples_per_s" not in compiled:
        return ("error", "error")
    return (f"{compiled['samples_per_s']:.1f}", f"{row['scalearn_compiled_speed_ratio']:.2f}x")


def _table(rows: list[dict]) -> str:
    header = ("N", "ours fusion s/s", "ours scalearn s/s", "ours scalearn+compile s/s", "peer fusion s/s",
              "fusion ratio", "scalearn ratio", "scalearn+compile ratio", "ours fusion MB", "ours scalearn MB",
              "peer fusion MB", "scalearn/peer mem")
    lines = ["  ".join(header)]
    for r in rows:
        compiled, compiled_ratio = _compiled_cells(r)
        lines.append("  ".join(str(v) for v in (
            r["n"], f"{r['ours_fusion']['samples_per_s']:.1f}", f"{r['ours_scalearn']['samples_per_s']:.1f}",
            compiled, f"{r['peer_fusion'].get('samples_per_s', float('nan')):.1f}",
            f"{r['fusion_speed_ratio']:.2f}x", f"{r['scalearn_speed_ratio']:.2f}x", compiled_ratio,
            f"{r['ours_fusion']['step_mb']:.0f}",
            f"{r['ours_scalearn']['step_mb']:.0f}", f"{r['peer_fusion'].get('step_mb', float('nan')):.0f}",
            f"{r['scalearn_memory_ratio']:.2f}")))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--sources", default="2,4,8,16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peer-python", default=str(DEFAULT_PEER))
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip-compile", action="store_true",
                        help="leave out the ScaLearn run with the trainer's compile option on")
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--method", default="fusion", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = PRESETS[args.preset]
    if args.worker:
        if args.worker == "ours":
            result = worker_ours(args.method, args.n, shape, args.steps, args.warmup, compile=args.compile)
        else:
            result = worker_peer(args.method, args.n, shape, args.steps, args.warmup)
        print(json.dumps(result))
        return
    if not Path(args.peer_python).exists():
        sys.exit(f"peer environment missing: {args.peer_python} (see this script's docstring)")
    rows = []
    for n in (int(x) for x in args.sources.split(",")):
        row = {"n": n, "ours_fusion": _run_worker(sys.executable, "ours", "fusion", n, args),
               "ours_scalearn": _run_worker(sys.executable, "ours", "scalearn", n, args),
               "peer_fusion": _run_worker(args.peer_python, "peer", "fusion", n, args)}
        peer = row["peer_fusion"]
        row["fusion_speed_ratio"] = row["ours_fusion"]["samples_per_s"] / peer.get("samples_per_s", float("nan"))
        row["scalearn_speed_ratio"] = row["ours_scalearn"]["samples_per_s"] / peer.get("samples_per_s", float("nan"))
        row["scalearn_memory_ratio"] = row["ours_scalearn"]["step_mb"] / peer.get("step_mb", float("nan"))
        if not args.skip_compile:
            compiled = _run_worker(sys.executable, "ours", "scalearn", n, args, compile=True)
            row["ours_scalearn_compiled"] = compiled
            row["scalearn_compiled_speed_ratio"] = (compiled.get("samples_per_s", float("nan"))
                                                    / peer.get("samples_per_s", float("nan")))
        rows.append(row)
        print(f"N={n}: {json.dumps(row)}", file=sys.stderr)
    print(f"preset {args.preset}: {shape}; {args.steps} timed steps after {args.warmup} warm-up; "
          "ratios = ours / peer (speed: higher is better; memory: lower is better)")
    print(_table(rows))
    out = Path(args.out or Path(__file__).parent / "results" / f"bench_transfer_{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": args.preset, "shape": shape, "steps": args.steps, "rows": rows,
                               "command": " ".join(sys.argv)}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
