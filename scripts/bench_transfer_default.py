"""The embedded default of ``plmkit transfer``: wall time cold and warm, and quality over seeds.

Three runs of the command a newcomer types, each in a fresh run folder:

1. cold: ``plmkit transfer`` on an empty adapter store (every stage-1 adapter is trained);
2. warm: the same command again on the now-filled store (stage 1 is reused);
3. seeds: ``plmkit transfer --seeds 1,2,3`` on the filled store: the target's own adapter (the
   baseline) and ScaLearn on the same splits and seeds, mean ± std and the gain per seed.

Prints a Markdown table (the README's quick-start table) and writes JSON. Extra arguments after
``--`` go to every ``plmkit transfer`` call (e.g. ``-- --epochs 6`` to try another schedule).

    python scripts/bench_transfer_default.py
    python scripts/bench_transfer_default.py --skip-cold -- --max-train-samples 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plmkit_transfer(store: Path, output: Path, extra: list[str]) -> tuple[float, dict]:
    """Run ``plmkit transfer`` as a user would; (wall seconds, its metrics.json)."""
    command = [str(Path(sys.executable).parent / "plmkit"), "transfer", "--store", str(store), "--output-dir", str(output),
               "--no-progress", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, json.loads((output / "metrics.json").read_text())


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--store", default=None, help="adapter store to use (default: a new empty folder)")
    parser.add_argument("--skip-cold", action="store_true", help="reuse --store as it is (no cold timing)")
    parser.add_argument("--work", default=None, help="folder for the run folders (default: a temp folder)")
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "transfer_default.json"))
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    work = Path(args.work or tempfile.mkdtemp(prefix="transfer-default-"))
    store = Path(args.store) if args.store else work / "store"
    result: dict = {"command": "plmkit transfer " + " ".join(extra), "extra_args": extra,
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "timings": {}}

    if not args.skip_cold:
        result["load_before_cold"] = load_average()
        seconds, metrics = plmkit_transfer(store, work / "cold", extra)
        result["timings"]["cold_s"] = seconds
        result["source_quality"] = metrics["source_quality"]
    result["load_before_warm"] = load_average()
    seconds, metrics = plmkit_transfer(store, work / "warm", extra)
    result["timings"]["warm_s"] = seconds
    result["load_before_seeds"] = load_average()
    seconds, metrics = plmkit_transfer(store, work / "seeds", [*extra, "--seeds", args.seeds])
    result["timings"]["seeds_s"] = seconds
    result["summary"] = metrics["summary"]
    result["runs"] = [{"method": r["method"], "seed": r["seed"], "test": r["test"], "validation": r["validation"],
                       "source_weights": r.get("source_weights")} for r in metrics["runs"]]
    result["source_quality"] = metrics["source_quality"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    timing = result["timings"]
    cold = f"{timing['cold_s'] / 60:.1f} min" if "cold_s" in timing else "not run"
    print(f"\n{result['command'].strip()} -- {os.cpu_count()} CPUs; cold {cold}, "
          f"warm {timing['warm_s'] / 60:.1f} min (one seed); seeds {args.seeds}:\n")
    print("| method | test accuracy (mean ± std) | gain vs adapter | transfer params |")
    print("|---|---|---|---|")
    for row in result["summary"]:
        print(f"| {row['method']} | {100 * row['test_mean']:.2f} ± {100 * row['test_std']:.2f} | "
              f"{100 * row.get('gain', 0.0):+.2f} ± {100 * row.get('gain_std', 0.0):.2f} | "
              f"{row['transfer_parameters']:,} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
