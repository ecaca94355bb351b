"""Shared helpers of the benchmarks: percentiles, CPU accounting, arguments and result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / ".skyjobs" / "bench"  # git-ignored
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ statistics


def pct(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


def summary_ms(seconds: Iterable[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99, p99.9 and max of durations given in seconds, in milliseconds."""
    values = sorted(v * 1000 for v in seconds)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 3),
        "p50": round(pct(values, 0.50), 3),
        "p90": round(pct(values, 0.90), 3),
        "p99": round(pct(values, 0.99), 3),
        "p99.9": round(pct(values, 0.999), 3),
        "max": round(values[-1], 3),
    }


def fmt_ms(s: dict[str, float]) -> str:
    if not s.get("n"):
        return "no samples"
    return (f"p50 {s['p50']:.1f} ms, p90 {s['p90']:.1f}, p99 {s['p99']:.1f}, p99.9 {s['p99.9']:.1f}, "
            f"max {s['max']:.1f} (n={s['n']})")


# ------------------------------------------------------------------------------------------ CPU


def _proc_table() -> dict[int, tuple[int, float, float]]:
    """pid -> (ppid, own cpu seconds, reaped children's cpu seconds) for every process."""
    table: dict[int, tuple[int, float, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        # fields[0] is state (field 3); utime, stime, cutime, cstime are fields 14..17
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK,
                             (int(fields[13]) + int(fields[14])) / CLK_TCK)
    return table


def _tree_cpu(table: dict[int, tuple[int, float, float]], root: int) -> float:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            _, own, reaped = table[pid]
            total += own + reaped
            todo += children.get(pid, [])
    return total


def machine_busy() -> tuple[float, float]:
    """(busy cpu seconds, total cpu seconds) summed over all cores since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class CpuMeter:
    """CPU seconds of named process trees, of this process and of the whole machine over a window.

    `foreign` is what ran on the machine outside the benchmark (another test run, say): it says how
    much the figures may be distorted.
    """

    roots: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    def _sample(self) -> dict[str, float]:
        table = _proc_table()
        sample = {name: _tree_cpu(table, pid) for name, pid in self.roots.items() if pid}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        sample["bench client"] = usage.ru_utime + usage.ru_stime
        sample["_busy"], sample["_total"] = machine_busy()
        return sample

    def __enter__(self) -> CpuMeter:
        self.start = self._sample()
        self.wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> dict[str, Any]:
        end = self._sample()
        wall = time.monotonic() - self.wall
        used = {k: end[k] - self.start.get(k, 0.0) for k in end if not k.startswith("_")}
        busy = end["_busy"] - self.start["_busy"]
        ours = sum(used.values())
        self.result = {
            "wall_s": round(wall, 3),
            "cores_busy": round(busy / wall, 2),
            "per_process_cores": {k: round(v / wall, 3) for k, v in sorted(used.items(), key=lambda kv: -kv[1])},
            "foreign_cores": round(max(0.0, busy - ours) / wall, 2),
        }
        return self.result


def compiler_seconds(pid: int) -> float:
    """CPU seconds the JIT compiler threads of the JVM `pid` have used so far (0 where /proc cannot tell)."""
    ticks = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if "CompilerThre" not in f.read():  # "C2 CompilerThread0", truncated to 15 characters
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_per_unit(cpu: dict[str, Any], units: int, scale: float = 1e3) -> dict[str, float]:
    """CPU time of each process per unit of work (ms by default; scale=1e6 for us)."""
    wall = cpu["wall_s"]
    return {k: round(v * wall / max(units, 1) * scale, 3) for k, v in cpu["per_process_cores"].items() if v >= 0.005}


def fmt_cpu(cpu: dict[str, Any]) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu["per_process_cores"].items() if v >= 0.005)
    return (f"CPU (cores busy over {cpu['wall_s']:.0f} s): total {cpu['cores_busy']:.2f} of {os.cpu_count()}; "
            f"{parts}; outside the benchmark {cpu['foreign_cores']:.2f}")


# ------------------------------------------------------------------------------------------ CLI + results


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=(doc or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter run (smaller samples, noisier figures)")
    p.add_argument("--pg-fast", action="store_true",
                   help="Postgres with fsync/synchronous_commit/full_page_writes off (default: durable)")
    p.add_argument("--keep", action="store_true", help="keep the stack's temp dir (logs) after the run")
    p.add_argument("--json", type=Path, default=None, help=f"result file (default {RESULTS_DIR}/{name}.json)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the skyjobs processes (experiments, e.g. SKYJOBS_EXECUTOR_SLOTS=64)")
    return p


def env_arg(args: Any) -> dict[str, str]:
    """--env NAME=VALUE pairs as a dict."""
    return dict(item.split("=", 1) for item in args.env)


def _git(*args: str) -> str:
    import subprocess

    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "?"


def _modified() -> int | None:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status == "?" else len(status.splitlines())


def conditions() -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "source": os.environ.get("BENCH_SOURCE", ""),  # e.g. "snapshot of <commit>" when run from a copy
        "git_head": _git("rev-parse", "--short", "HEAD"),
        "git_modified_files": _modified(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kb / 1024**2, 1),
        "loadavg_before": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def save(name: str, result: dict[str, Any], args: Any) -> Path:
    """Write the result as JSON, with the command line that produced it."""
    result["command"] = "python -m bench." + name + "".join(f" {a}" for a in sys.argv[1:])
    result["extra_env"] = env_arg(args)
    path = args.json or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nresult written to {path}", flush=True)
    return path


def say(*parts: object) -> None:
    print(*parts, flush=True)


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run the benchmark's coroutine on uvloop (a cheaper client: less noise on 2 cores)."""
    import uvloop

    return uvloop.run(coro)


def exit_on_interrupt(main: Any) -> None:
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
