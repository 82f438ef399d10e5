#!/usr/bin/env python3
"""Profile our proxy under wrk load with py-spy (companion of bench_proxy.py).

Starts the nginx backend and `python main.py` like bench_proxy.py does, drives
`wrk -t1 -cN` for --duration seconds while `py-spy record` samples the proxy,
and writes the profile (raw collapsed stacks, or a flame graph with --format
flamegraph) plus a short "top functions" summary to stdout.

    pip install py-spy   # needs ptrace (root or CAP_SYS_PTRACE)
    python bench/profile_proxy.py --duration 15 --connections 32 --out /tmp/ours.txt
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_proxy as bp  # noqa: E402


def top_functions(collapsed: Path, n: int = 25) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """Self and inclusive sample counts per frame from py-spy's raw (collapsed) output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = stack.split(";")
        self_counts[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    return self_counts.most_common(n), incl.most_common(n), total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    p.add_argument("--access-log", action="store_true", help="profile with --access-log on")
    p.add_argument("--out", default="ours-profile.txt", help="where to write the profile")
    p.add_argument("--format", default="raw", choices=("raw", "flamegraph", "speedscope"))
    args = p.parse_args()
    pyspy = shutil.which("py-spy")
    if not pyspy:
        sys.exit("error: py-spy not found (pip install py-spy)")
    nginx, wrk = bp.find_tools()
    target = "ours-accesslog" if args.access_log else "ours"
    procs = bp.Processes()
    tmp = Path(tempfile.mkdtemp(prefix="orchestrator-profile-"))
    try:
        urls = bp.start_all(procs, nginx, tmp, ["direct", target])
        ours = next(s for s in procs.servers if s.name == target)
        raw_out = tmp / "profile.raw" if args.format != "raw" else Path(args.out)
        spy_argv = [pyspy, "record", "--pid", str(ours.proc.pid), "--rate", str(args.rate),
                    "--duration", str(args.duration + 1), "--nonblocking"]
        spy = subprocess.Popen(spy_argv + ["--format", "raw", "-o", str(raw_out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        procs.others.append(spy)
        result: dict[str, object] = {}
        t = threading.Thread(target=lambda: result.update(
            bp.run_wrk(wrk, urls[target], args.connections, args.duration)))
        t.start()
        t.join()
        _, err = spy.communicate(timeout=args.duration + 60)
        if spy.returncode != 0:
            sys.exit(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')}")
        if args.format != "raw":
            spy2 = subprocess.run([pyspy, "record", "--pid", str(ours.proc.pid), "--rate", str(args.rate),
                                   "--duration", str(args.duration), "--nonblocking", "--format", args.format,
                                   "-o", args.out], capture_output=True, timeout=args.duration + 60)
            if spy2.returncode != 0:
                print("py-spy (second pass) failed", file=sys.stderr)
        secs = result["duration_us"] / 1e6  # type: ignore[operator]
        print(f"# {target} under wrk -t1 -c{args.connections} for {args.duration}s: "
              f"{result['requests'] / secs:.0f} req/s (slowed by sampling), "  # type: ignore[operator]
              f"p50 {result['latency_us']['p50'] / 1000:.2f} ms")  # type: ignore[index]
        selfc, incl, total = top_functions(raw_out)
        print(f"# {total} samples; profile written to {args.out}")
        print("\n## top self time (function (file:line))")
        for frame, c in selfc:
            print(f"{c / total * 100:6.1f} %  {frame}")
        print("\n## top inclusive time")
        for frame, c in incl:
            print(f"{c / total * 100:6.1f} %  {frame}")
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
