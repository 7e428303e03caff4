"""How `ssl-guard scan` scales: peak memory against dataset size, and per-stage throughput.

    nice -n 10 python bench/bench_scale.py [SHARD_FOLDER] [--shards 3,5,10] [--resolutions 64,96]
                                          [--full-resolution-shards 10] [--workers 2] [--mining-images N]
    nice -n 10 python bench/bench_scale.py --mine-alone RUN --shards 3000,9469 --mining-images 2500

SHARD_FOLDER defaults to bench/work/imagenette-patch-1pct/shards (built by make_benchmark.py:
9,469 Imagenette photos in 10 shards, 1% patch-poisoned). For each count k in --shards, the first
k shards are linked into bench/work/scale/data-k/ and scanned at the first resolution; the counts
in --full-resolution-shards are also scanned at every other resolution. Each scan is a child
process (`python -m ssl_guard scan ... --quiet`) whose process tree (the scan and its DataLoader
workers) is sampled every 0.2 s from /proc:

- peak RSS of the scan process (its VmHWM, the kernel's high-water mark), split at the moment of
  the largest RSS into anonymous memory (heap: what an OOM is made of) and file-backed pages
  (pages of the run folder's memmaps the kernel keeps mapped and may reclaim at will);
- peak RSS summed over the process tree (scan + decoders), and the largest anonymous sum.

Stage times come from RUN/run.json (`stages.*.seconds`) and report.json (the detector's
sub-stages); "wall" is the child's whole life, Python and torch start-up included. Before the
scans, one child measures the single-thread cost per image of decoding + resizing a shard's JPEGs
and of the encoder's forward pass (bench/work/scale/per_core.json; `--per-core-only` stops there).
Prints Markdown tables and writes bench/work/scale/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work" / "scale"
DEFAULT_DATA = ROOT / "bench" / "work" / "imagenette-patch-1pct" / "shards"
KIB = 1024


def _status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of one process, in bytes (missing if it just exited)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    values[name] = int(rest.split()[0]) * KIB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (via /proc/PID/task/*/children)."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as handle:
                    stack.extend(int(c) for c in handle.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


STAGE_ORDER = ("embed", "semantic", "detect-mine")


def _current_stage(run: Path | None) -> str:
    """The stage a scan is in: the first of STAGE_ORDER its run.json has not finished."""
    try:
        done = json.loads((run / "run.json").read_text())["stages"] if run else {}
    except (FileNotFoundError, ValueError, KeyError):
        return "start-up"
    return next((stage for stage in STAGE_ORDER if stage not in done), "outputs")


def measure(command: list[str], env: dict[str, str], run: Path | None = None) -> dict:
    """Run `command`, sampling its process tree's memory; returns peaks (bytes), the stage the scan
    (writing `run`) was in at its anonymous-memory peak, and wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    clock = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"main_hwm": 0, "main_rss": 0, "main_anon_at_peak": 0, "main_file_at_peak": 0, "main_anon": 0, "tree_rss": 0, "tree_anon": 0, "processes": 1, "anon_peak_stage": ""}
    while child.poll() is None:
        main = _status(child.pid)
        if main:
            peak["main_hwm"] = max(peak["main_hwm"], main.get("VmHWM", 0))
            if main.get("RssAnon", 0) > peak["main_anon"]:
                peak["main_anon"] = main["RssAnon"]
                peak["anon_peak_stage"] = _current_stage(run)
            if main.get("VmRSS", 0) > peak["main_rss"]:
                peak["main_rss"] = main["VmRSS"]
                peak["main_anon_at_peak"], peak["main_file_at_peak"] = main.get("RssAnon", 0), main.get("RssFile", 0)
        pids = _tree(child.pid)
        stats = [_status(p) for p in pids]
        peak["tree_rss"] = max(peak["tree_rss"], sum(s.get("VmRSS", 0) for s in stats))
        peak["tree_anon"] = max(peak["tree_anon"], sum(s.get("RssAnon", 0) for s in stats))
        peak["processes"] = max(peak["processes"], len(pids))
        time.sleep(0.2)
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - clock
    if child.returncode != 0:
        raise SystemExit(f"scan failed ({child.returncode}):\n{stderr[-3000:]}")
    # the kernel's own maximum over every descendant reaped so far (one process, not a sum)
    peak["max_single_process"] = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * KIB
    return {"wall": wall, "memory": peak, "stdout": stdout.strip()}


def subset(data: Path, count: int) -> tuple[Path, int]:
    """bench/work/scale/data-<count>/ holding links to the first `count` shards; (folder, samples)."""
    shards = sorted(data.glob("*.tar"))[:count]
    if len(shards) < count:
        raise SystemExit(f"{data} has {len(shards)} shards, fewer than {count}")
    folder = WORK / f"data-{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for shard in shards:
        (folder / shard.name).symlink_to(shard.resolve())
    samples = 0
    truth = data.parent / "truth.csv"
    if truth.is_file():
        names = {s.name for s in shards}
        samples = sum(1 for line in truth.read_text().splitlines()[1:] if line.split(",", 1)[0] in names)
    return folder, samples


def scan_once(folder: Path, count: int, resolution: int, workers: int, mining_images: int | None = None) -> dict:
    run = WORK / (f"run-{count}-{resolution}" + (f"-mine{mining_images}" if mining_images else ""))
    shutil.rmtree(run, ignore_errors=True)  # this bench's own output from an earlier run
    if mining_images:  # the CLI has no flag for it: the same scan through the library
        call = f"from ssl_guard.detect.pipeline import scan; scan([{str(folder)!r}], {str(run)!r}, workers={workers}, resolution={resolution}, progress=False, mine={{'mining_images': {mining_images}}})"
        command = [sys.executable, "-c", call]
    else:
        command = [sys.executable, "-m", "ssl_guard", "scan", str(folder), "--out", str(run), "--workers", str(workers), "--resolution", str(resolution), "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result = measure(command, env, run)
    state = json.loads((run / "run.json").read_text())
    report = json.loads((run / "report.json").read_text())
    stages = {name: {"seconds": s["seconds"], "items": s["items"]} for name, s in state["stages"].items()}
    substages = {s["name"].strip(): s["seconds"] for s in report["stages"] if s["name"].startswith("  ")}
    return {
        "shards": count,
        "resolution": resolution,
        "mining_images": mining_images or 20_000,
        "samples": report["n_samples"],
        "flagged": report["n_flagged"],
        "encoder": report["encoder"],
        "stages": stages,
        "substages": substages,
        "run_bytes": {p.name: p.stat().st_size for p in run.iterdir() if p.is_file()},
        **result,
    }


def per_core_costs(data: Path, resolutions: list[int], samples: int = 512) -> dict:
    """Single-thread cost per image of the embed stage's two halves, measured in a child with one
    torch thread: decoding + resizing (per resolution), and the encoder's forward pass (with its
FLOP count from torch's FlopCounterMode)."""
    code = f"""
import json, time, torch, numpy as np
torch.set_num_threads(1)
from ssl_guard.data import resolve_sources, iter_raw_samples, decode_rgb, to_square_array
from ssl_guard.encoders import load_encoder
from ssl_guard.config import DEFAULT_MINING_ENCODER
unit = resolve_sources([{str(data)!r}]).units[0]
raw = [s.data for _, s in zip(range({samples}), iter_raw_samples(unit)) if s.data]
out = {{"images": len(raw)}}
for r in {resolutions!r}:
    clock = time.perf_counter()
    pixels = np.stack([to_square_array(decode_rgb(b), r) for b in raw])
    decode = (time.perf_counter() - clock) / len(raw)
    net = load_encoder(DEFAULT_MINING_ENCODER.replace("resolution=64", f"resolution={{r}}"), "cpu")
    x = torch.from_numpy(pixels).float().div_(255).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x[:32])
        clock = time.perf_counter()
        for start in range(0, len(x), 128):
            net(x[start:start + 128])
    forward = (time.perf_counter() - clock) / len(raw)
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(x[:8])
    out[str(r)] = {{"decode_ms": 1000 * decode, "forward_ms": 1000 * forward, "forward_gflop": counter.get_total_flops() / 8 / 1e9, "embed_dim": int(net.config.embed_dim)}}
print(json.dumps(out))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


MINE_ALONE = """
import sys, threading, time, json, numpy as np
from ssl_guard.detect.mine import detect_mine, MineConfig
run, n, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
images = np.load(run + "/images.u8.npy", mmap_mode="r")[:n]
semantic = np.load(run + "/semantic.npy")[:n]
state = {"stage": "start-up", "peaks": {}}
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024
def poll():
    while True:
        stage = state["stage"]
        state["peaks"][stage] = max(state["peaks"].get(stage, 0), anon())
        time.sleep(0.05)
class Stages:  # stands in for the progress bar: records which sub-stage is running
    def add_task(self, name, total=None):
        state["stage"] = name
        return name
    def advance(self, task, k):
        pass
base = anon()
threading.Thread(target=poll, daemon=True).start()
detection = detect_mine(images, semantic, MineConfig(mining_images=cap), "cpu", Stages())
print(json.dumps({"images": n, "mining_images": cap, "base": base, "peaks": state["peaks"], "flagged": int(detection.flagged.sum())}))
"""


def mine_alone(run: Path, sizes: list[int], mining_images: int) -> list[dict]:
    """The `mine` detector by itself on the first n rows of a finished run's image cache, its
    process's anonymous memory sampled every 50 ms per sub-stage (bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    out = []
    for n in sizes:
        done = subprocess.run([sys.executable, "-c", MINE_ALONE, str(run), str(n), str(mining_images)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def tables(results: list[dict]) -> str:
    lines = ["### Peak memory", "", "| images | px | mined | scan RSS peak (VmHWM) | of which anonymous / file-backed at the peak | scan anonymous peak (stage) | tree RSS peak (scan + decoders) | tree anonymous peak |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["memory"]
        lines.append(f"| {r['samples']:,} | {r['resolution']} | {min(r['samples'], r.get('mining_images', 20_000)):,} | {mib(m['main_hwm'])} MiB | {mib(m['main_anon_at_peak'])} / {mib(m['main_file_at_peak'])} MiB | {mib(m['main_anon'])} MiB ({m.get('anon_peak_stage', '?')}) | {mib(m['tree_rss'])} MiB | {mib(m['tree_anon'])} MiB |")
    lines += ["", "### Stage times", "", "| images | px | stage | seconds | images/s |", "|---|---|---|---|---|"]
    for r in results:
        for name, s in r["stages"].items():
            lines.append(f"| {r['samples']:,} | {r['resolution']} | {name} | {s['seconds']:.1f} | {s['items'] / s['seconds']:,.0f} |")
        for name, seconds in r["substages"].items():
            lines.append(f"| {r['samples']:,} | {r['resolution']} | &nbsp;&nbsp;mine: {name} | {seconds:.1f} | {r['samples'] / seconds:,.0f} |" if seconds > 0 else f"| {r['samples']:,} | {r['resolution']} | &nbsp;&nbsp;mine: {name} | 0.0 | |")
        stage_sum = sum(s["seconds"] for s in r["stages"].values())
        lines.append(f"| {r['samples']:,} | {r['resolution']} | **whole scan** (wall, start-up and outputs included) | {r['wall']:.1f} | {r['samples'] / r['wall']:,.0f} |")
        r["cost_multiple"] = {"stages": stage_sum / r["stages"]["embed"]["seconds"], "wall": r["wall"] / r["stages"]["embed"]["seconds"]}
    lines += ["", "### Whole scan as a multiple of one embedding pass", "", "| images | px | embed s | sum of stages / embed | wall / embed | flagged |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['samples']:,} | {r['resolution']} | {r['stages']['embed']['seconds']:.1f} | {r['cost_multiple']['stages']:.2f} | {r['cost_multiple']['wall']:.2f} | {r['flagged']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--shards", default="3,5,10", help="comma-separated shard counts")
    parser.add_argument("--resolutions", default="64,96")
    parser.add_argument("--full-resolution-shards", default="10", help="shard counts also scanned at every other resolution")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mining-images", type=int, default=None, help="mine's sample cap (default 20,000): a smaller cap shows memory beyond it")
    parser.add_argument("--mine-alone", type=Path, default=None, metavar="RUN", help="only: mine's memory by itself on RUN's image cache at the --shards sizes read as image counts")
    parser.add_argument("--per-core-only", action="store_true", help="only the single-thread decode / forward costs")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} does not exist: build it with bench/make_benchmark.py")
    counts = [int(c) for c in args.shards.split(",")]
    if args.mine_alone:
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "mine_alone.json").write_text(json.dumps(mine_alone(args.mine_alone, counts, args.mining_images or 20_000), indent=2))
        return
    resolutions = [int(r) for r in args.resolutions.split(",")]
    every = {int(c) for c in args.full_resolution_shards.split(",") if c}
    WORK.mkdir(parents=True, exist_ok=True)
    costs = per_core_costs(args.data, resolutions)
    print("single-thread cost per image (ms): " + json.dumps(costs), file=sys.stderr, flush=True)
    (WORK / "per_core.json").write_text(json.dumps(costs, indent=2))
    if args.per_core_only:
        return
    results = []
    results_name = f"results-mine{args.mining_images}.json" if args.mining_images else "results.json"
    for count in counts:
        folder, _ = subset(args.data, count)
        for resolution in resolutions if count in every else resolutions[:1]:
            print(f"scanning {count} shard(s) at {resolution} px ...", file=sys.stderr, flush=True)
            result = scan_once(folder, count, resolution, args.workers, args.mining_images)
            results.append(result)
            print(f"  {result['samples']:,} images, {result['wall']:.0f} s, scan VmHWM {mib(result['memory']['main_hwm'])} MiB", file=sys.stderr, flush=True)
            (WORK / results_name).write_text(json.dumps(results, indent=2))
    text = tables(results)
    (WORK / results_name).write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
