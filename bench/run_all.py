"""Every benchmark in turn, each in its own process on its own fresh stack, then one summary table.

    python -m bench.run_all [--quick] [--pg-fast] [--only accept,latency,...]

What `make bench` runs. The summary (markdown) is printed and written to .skyjobs/bench/summary.md;
each benchmark's full result is in .skyjobs/bench/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS_DIR, conditions, machine_busy, say

BENCHMARKS = ["accept", "latency", "throughput", "celery_compare", "projection_lag", "job_info"]


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) for the summary table."""
    out: list[tuple[str, str, str, str]] = []
    if r := results.get("accept"):
        b = r["best"]
        out.append(("accepted runs/s (closed loop, best of " + ",".join(str(x["concurrency"]) for x in r["closed_loop"])
                     + " connections)",
                     f"{b['accepted_per_s']:.0f}/s at {b['concurrency']} conns; run call p50 "
                     f"{b['latency_ms']['p50']:.1f} ms, p99 {b['latency_ms']['p99']:.1f} ms", ">= 3,000/s", r["verdict"]))
        if o := r.get("open_loop"):
            out.append((f"run call latency at {o['rate']:.0f}/s (open loop)",
                        f"p50 {o['latency_ms']['p50']:.1f} ms, p99 {o['latency_ms']['p99']:.1f} ms", "-", "-"))
    if r := results.get("latency"):
        lat = r["submit_to_succeeded_seen_ms"]
        out.append((f"submit -> succeeded seen in job_info, `true` at {r['rate']:.0f}/s",
                    f"p50 {lat.get('p50', float('nan')):.1f} ms, p99 {lat.get('p99', float('nan')):.1f} ms",
                    "p50 <= 50 ms, p99 <= 250 ms", f"p50 {r['verdict']['p50']}, p99 {r['verdict']['p99']}"))
    if r := results.get("throughput"):
        out.append((f"executed `true` jobs/s (burst of {r['submitted']})",
                    f"steady {r.get('steady_per_s', 0):.0f}/s, end to end {r.get('end_to_end_per_s', 0):.0f}/s",
                    ">= 500/s", r["verdict"]))
    if r := results.get("celery_compare"):
        ratios = r.get("ratios", {})
        sky, cel = _get(r, "skyjobs", "throughput") or {}, _get(r, "celery", "throughput") or {}
        sl = _get(r, "skyjobs", "latency", "submit_to_succeeded_seen_ms") or {}
        cl = _get(r, "celery", "latency", "submit_to_succeeded_seen_ms") or {}
        out.append((f"skyjobs / Celery+Redis throughput (burst of {r['jobs']}, Celery prefork "
                    f"-c {r['celery_concurrency']})",
                    f"{sky.get('steady_per_s', 0):.0f} / {cel.get('steady_per_s', 0):.0f} jobs/s = "
                    f"{ratios.get('throughput_steady_skyjobs_over_celery')}x", ">= 1.5x", r.get("verdict", "-")))
        out.append((f"skyjobs / Celery latency at {r['rate']:.0f}/s",
                    f"p50 {sl.get('p50', 0):.1f} / {cl.get('p50', 0):.1f} ms "
                    f"({ratios.get('latency_p50_skyjobs_over_celery')}x), p99 {sl.get('p99', 0):.1f} / "
                    f"{cl.get('p99', 0):.1f} ms ({ratios.get('latency_p99_skyjobs_over_celery')}x)", "-", "-"))
    if r := results.get("projection_lag"):
        lag = r["lag_ms"]
        out.append((f"projection lag at {r['rate']:.0f} events/s",
                    f"p50 {lag.get('p50', 0):.1f} ms, p99 {lag.get('p99', 0):.1f} ms", "p99 <= 100 ms", r["verdict"]))
    if r := results.get("job_info"):
        lat = r["latency_ms"]
        out.append((f"job_info at {r['rate']:.0f}/s, {r['load']['rows']:,} jobs (bulk-loaded by COPY)",
                    f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms", "p99 <= 10 ms", r["verdict"]))
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| figure | measured | target | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    return "\n".join(lines)


def wait_quiet(limit: float, threshold: float = 0.3) -> float:
    """Wait (at most `limit` s) until the machine is nearly idle: other work distorts every figure.

    Returns the cores busy in the last 5 s window (what the benchmark starts with)."""
    deadline = time.monotonic() + limit
    while True:
        busy0, _ = machine_busy()
        time.sleep(5)
        busy = (machine_busy()[0] - busy0) / 5
        if busy <= threshold or time.monotonic() > deadline:
            return busy
        say(f"waiting for a quiet machine: {busy:.2f} cores busy (other work)")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument("--pg-fast", action="store_true", help="pass --pg-fast to every benchmark")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset, in this order")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before each benchmark wait up to this long for the machine to be idle (< 0.3 cores busy)")
    args = p.parse_args()
    chosen = [b for b in args.only.split(",") if b]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    cond = conditions()
    results: dict[str, dict[str, Any]] = {}
    failed = []
    started = time.monotonic()
    for name in chosen:
        path = RESULTS_DIR / f"run_all-{name}.json"
        path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(path)]
        cmd += ["--quick"] * args.quick + ["--pg-fast"] * args.pg_fast
        if args.wait_quiet:
            say(f"machine busy before {name}: {wait_quiet(args.wait_quiet):.2f} cores")
        say(f"\n######## {' '.join(cmd[1:])}")
        t = time.monotonic()
        code = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        say(f"######## {name}: exit {code} after {time.monotonic() - t:.0f} s")
        if code == 0 and path.exists():
            results[name] = json.loads(path.read_text())
        else:
            failed.append(name)
    summary = table(results)
    text = (f"benchmarks run {cond['when']} on {cond['cpus']} cores, {cond['mem_gib']} GiB; "
            f"{'quick runs; ' if args.quick else ''}Postgres {'fast (fsync off)' if args.pg_fast else 'durable'}; "
            f"total {time.monotonic() - started:.0f} s\n\n{summary}\n")
    if failed:
        text += f"\nFAILED: {', '.join(failed)}\n"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "summary.md").write_text(text)
    say("\n" + text)
    say(f"summary written to {Path(RESULTS_DIR / 'summary.md')}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
