"""skyjobs vs Celery (Redis broker and result back end) on the same shell commands, in the same run.

Target: skyjobs >= 1.5x Celery's throughput. Each system runs alone on the machine in its turn
(skyjobs first, then its stack is stopped and Celery's started), with the same two measurements:
  throughput  a burst of N `true` jobs, completion polled every 100 ms (skyjobs: the jobs table;
              Celery: MGET of the result keys) -- end to end, server and steady rates as in
              bench.throughput (Celery's "server" times: the client's submit and the task's own end);
  latency     open loop at 100 jobs/s; each job's result polled every --poll-ms until it has
              succeeded (skyjobs: GET job_info; Celery: GET of its result key, the back end's own
              storage), clock from the scheduled submit to the first successful poll.
Celery: prefork pool (--celery-concurrency, default 2 processes = the 2 cores), default prefetch
multiplier (4), early acks, json serializer, the task runs subprocess.run(["/bin/sh", "-c", cmd]) and
returns exit code and output. Redis 7 from Debian without persistence (no RDB, no AOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import orjson

from bench.common import (
    CpuMeter,
    conditions,
    cpu_per_unit,
    env_arg,
    exit_on_interrupt,
    fmt_cpu,
    fmt_ms,
    parser,
    run,
    save,
    say,
    summary_ms,
    verdict,
)
from bench.latency import report as report_latency
from bench.latency import skyjobs_latency
from bench.redis_server import ensure_installed, running_redis, version
from bench.stack import BenchStack
from bench.throughput import rates, skyjobs_burst
from bench.throughput import report as report_burst

NAME = "celery_compare"
TARGET_RATIO = 1.5
META = "celery-task-meta-"


class CeleryRig:
    """A Celery worker process on a running Redis, and the client side of the measurements."""

    def __init__(self, url: str, concurrency: int) -> None:
        os.environ["BENCH_REDIS_URL"] = url
        from bench import celery_app

        celery_app.app.conf.update(broker_url=f"{url}/0", result_backend=f"{url}/1")
        self.app = celery_app.app
        self.task = celery_app.run_shell
        self.url = url
        self.concurrency = concurrency
        self.proc: asyncio.subprocess.Process | None = None
        import redis

        self.results = redis.Redis.from_url(f"{url}/1")

    async def start(self, log: Any) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "prefork",
                "-c", str(self.concurrency), "-l", "WARNING", "-Q", "bench",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(*argv, env={**os.environ, "BENCH_REDIS_URL": self.url},
                                                         stdout=log, stderr=log, start_new_session=True)
        started = time.monotonic()
        result = await asyncio.to_thread(lambda: self.task.apply_async(args=["true"]).get(timeout=120))
        assert result["exit_code"] == 0, result
        say(f"celery worker ready after {time.monotonic() - started:.1f} s")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    def _poll(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Finished tasks among `ids`: id -> result meta."""
        done = {}
        for at in range(0, len(ids), 1000):
            chunk = ids[at: at + 1000]
            for task_id, raw in zip(chunk, self.results.mget([META + i for i in chunk]), strict=True):
                if raw is not None:
                    meta = orjson.loads(raw)
                    if meta["status"] in ("SUCCESS", "FAILURE"):
                        done[task_id] = meta
        return done

    def burst(self, n: int, command: str = "true", timeout: float = 170) -> dict[str, Any]:
        started = time.time()
        submitted: dict[str, float] = {}
        for _ in range(n):
            t = time.time()
            submitted[self.task.apply_async(args=[command]).id] = t
        accepted_at = time.time()
        pending = list(submitted)
        finished: dict[str, dict[str, Any]] = {}
        progress = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            time.sleep(0.1)
            finished |= self._poll(pending)
            pending = [i for i in pending if i not in finished]
            progress.append((round(time.time() - started, 2), len(finished)))
        seen = time.time()
        states: dict[str, int] = {}
        for meta in finished.values():
            state = "succeeded" if meta["status"] == "SUCCESS" and meta["result"]["exit_code"] == 0 else "failed"
            states[state] = states.get(state, 0) + 1
        result: dict[str, Any] = {"submitted": n, "finished": len(finished), "states": states,
                                  "progress_every_100ms": progress[::5]}
        if pending:
            result["incomplete"] = True
        ok = [(submitted[i], m["result"]) for i, m in finished.items() if m["status"] == "SUCCESS"]
        if ok:
            result |= rates(sorted(s for s, _ in ok), sorted(r["finished"] for _, r in ok), started, seen,
                            accepted_at)
            result["queue_ms"] = summary_ms(r["started"] - s for s, r in ok)
            result["run_ms"] = summary_ms(r["finished"] - r["started"] for _, r in ok)
        return result

    def latency(self, rate: float, duration: float, poll: float, command: str = "true",
                timeout: float = 60) -> dict[str, Any]:
        total = int(rate * duration)
        outstanding: dict[str, tuple[float, float]] = {}  # id -> (scheduled, accepted)
        lock = threading.Lock()
        jobs: list[dict[str, Any]] = []
        submit_done = threading.Event()
        call_ms: list[float] = []

        def submitter() -> None:
            t0 = time.time() + 0.01
            for i in range(total):
                scheduled = t0 + i / rate
                delay = scheduled - time.time()
                if delay > 0:
                    time.sleep(delay)
                task_id = self.task.apply_async(args=[command]).id
                accepted = time.time()
                call_ms.append(accepted - scheduled)
                with lock:
                    outstanding[task_id] = (scheduled, accepted)
            submit_done.set()

        thread = threading.Thread(target=submitter, daemon=True)
        thread.start()
        deadline = time.time() + duration + timeout
        while time.time() < deadline:
            polled = time.time()
            with lock:
                ids = list(outstanding)
            if not ids and submit_done.is_set():
                break
            done = self._poll(ids) if ids else {}
            seen = time.time()
            with lock:
                for task_id, meta in done.items():
                    scheduled, accepted = outstanding.pop(task_id)
                    res = meta["result"] if meta["status"] == "SUCCESS" else {}
                    jobs.append({"state": "succeeded" if res.get("exit_code") == 0 else "failed",
                                 "scheduled": scheduled, "accepted": accepted, "seen": seen,
                                 "started": res.get("started"), "finished": res.get("finished")})
            time.sleep(max(0.0, poll - (time.time() - polled)))
        thread.join()
        ok = [j for j in jobs if j["state"] == "succeeded"]
        return {
            "rate": rate, "duration_s": duration, "poll_ms": poll * 1000,
            "submitted": total, "accepted": len(call_ms), "lost": len(outstanding),
            "states": {s: sum(1 for j in jobs if j["state"] == s) for s in {j["state"] for j in jobs}},
            "submit_to_succeeded_seen_ms": summary_ms(j["seen"] - j["scheduled"] for j in ok),
            "run_call_ms": summary_ms(call_ms),
            "breakdown_ms": {
                "scheduled -> task started (broker, prefetch, pool)": summary_ms(j["started"] - j["scheduled"] for j in ok),
                "task started -> finished (subprocess.run)": summary_ms(j["finished"] - j["started"] for j in ok),
                "task finished -> seen succeeded (result store, poll)": summary_ms(j["seen"] - j["finished"] for j in ok),
            },
        }


def report_celery_latency(res: dict[str, Any]) -> None:
    say(f"celery: {res['accepted']} submitted at {res['rate']:.0f}/s; states {res['states']}; "
        f"lost {res['lost']}; result polled every {res['poll_ms']:.0f} ms")
    say(f"submit -> succeeded seen: {fmt_ms(res['submit_to_succeeded_seen_ms'])}")
    say(f"apply_async call:         {fmt_ms(res['run_call_ms'])}")
    for what, s in res["breakdown_ms"].items():
        say(f"  {what}: {fmt_ms(s)}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


async def skyjobs_phase(args: Any, n: int, duration: float) -> dict[str, Any]:
    say(f"=== skyjobs: burst of {n}, then {duration:.0f} s at {args.rate:.0f} jobs/s")
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep, env=env_arg(args)) as stack:
        await stack.start("projector", "worker", "executor", "api")
        say(f"worker ready after {await stack.wait_worker_ready():.1f} s")
        report_burst(await skyjobs_burst(stack, 300), "warm-up")
        with CpuMeter(stack.pids()) as cpu:
            tp = await skyjobs_burst(stack, n)
        tp["cpu"] = cpu.result
        tp["cpu_ms_per_job"] = cpu_per_unit(cpu.result, tp["finished"])
        report_burst(tp)
        say(fmt_cpu(cpu.result))
        say(f"CPU per job (ms): {tp['cpu_ms_per_job']}")
        await asyncio.sleep(2)
        client = stack.client()
        with CpuMeter(stack.pids()) as cpu:
            lat = await skyjobs_latency(client, args.rate, duration, args.poll_ms / 1000)
        client.close()
        lat["cpu"] = cpu.result
        report_latency(lat)
        say(fmt_cpu(cpu.result))
    return {"throughput": tp, "latency": lat}


async def celery_phase(args: Any, n: int, duration: float) -> dict[str, Any]:
    say(f"\n=== celery + redis {version(ensure_installed())}: prefork, {args.celery_concurrency} processes; "
        f"burst of {n}, then {duration:.0f} s at {args.rate:.0f} jobs/s")
    with running_redis() as (url, redis_proc), tempfile.TemporaryFile() as log:
        rig = CeleryRig(url, args.celery_concurrency)
        try:
            await rig.start(log)
            assert rig.proc is not None
            pids = {"celery worker": rig.proc.pid, "redis": redis_proc.pid}
            report_burst(await asyncio.to_thread(rig.burst, 300), "warm-up")
            with CpuMeter(pids) as cpu:
                tp = await asyncio.to_thread(rig.burst, n)
            tp["cpu"] = cpu.result
            tp["cpu_ms_per_job"] = cpu_per_unit(cpu.result, tp["finished"])
            report_burst(tp, "celery")
            say(fmt_cpu(cpu.result))
            say(f"CPU per job (ms): {tp['cpu_ms_per_job']}")
            await asyncio.sleep(2)
            with CpuMeter(pids) as cpu:
                lat = await asyncio.to_thread(rig.latency, args.rate, duration, args.poll_ms / 1000)
            lat["cpu"] = cpu.result
            report_celery_latency(lat)
            say(fmt_cpu(cpu.result))
        except BaseException:
            log.seek(0)
            say(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            await rig.stop()
    return {"throughput": tp, "latency": lat}


async def main_async(args: Any) -> dict[str, Any]:
    n = args.jobs or (1000 if args.quick else 3000)
    duration = args.duration or (8 if args.quick else 20)
    out: dict[str, Any] = {"name": NAME, "conditions": conditions(), "jobs": n, "rate": args.rate,
                           "latency_duration_s": duration, "poll_ms": args.poll_ms,
                           "celery_concurrency": args.celery_concurrency, "pg_fast": args.pg_fast,
                           "redis_version": version(ensure_installed())}
    systems = args.systems.split(",")
    if "skyjobs" in systems:
        out["skyjobs"] = await skyjobs_phase(args, n, duration)
    if "celery" in systems:
        out["celery"] = await celery_phase(args, n, duration)
    if len(out.keys() & {"skyjobs", "celery"}) < 2:
        return out
    sky_tp, cel_tp = out["skyjobs"]["throughput"], out["celery"]["throughput"]
    sl = out["skyjobs"]["latency"]["submit_to_succeeded_seen_ms"]
    cl = out["celery"]["latency"]["submit_to_succeeded_seen_ms"]
    ratios = {
        "throughput_steady_skyjobs_over_celery": _ratio(sky_tp.get("steady_per_s"), cel_tp.get("steady_per_s")),
        "throughput_end_to_end_skyjobs_over_celery": _ratio(sky_tp.get("end_to_end_per_s"),
                                                            cel_tp.get("end_to_end_per_s")),
        "latency_p50_skyjobs_over_celery": _ratio(sl.get("p50"), cl.get("p50")),
        "latency_p99_skyjobs_over_celery": _ratio(sl.get("p99"), cl.get("p99")),
    }
    out |= {"ratios": ratios, "target_throughput_ratio": TARGET_RATIO,
            "verdict": verdict(ratios["throughput_steady_skyjobs_over_celery"] or 0.0, TARGET_RATIO, True)}
    say("\n=== side by side")
    say(f"{'':28}{'skyjobs':>12}{'celery':>12}{'ratio':>8}")
    for label, key in (("steady jobs/s", "steady_per_s"), ("end-to-end jobs/s", "end_to_end_per_s")):
        a, b = sky_tp.get(key), cel_tp.get(key)
        say(f"{label:28}{a or 0:12.0f}{b or 0:12.0f}{_ratio(a, b) or 0:8.2f}")
    for q in ("p50", "p99"):
        a, b = sl.get(q), cl.get(q)
        say(f"{'latency ' + q + ' ms at ' + str(int(args.rate)) + '/s':28}{a or 0:12.1f}{b or 0:12.1f}"
            f"{_ratio(a, b) or 0:8.2f}")
    say(f"target: skyjobs throughput >= {TARGET_RATIO}x Celery's: {out['verdict']}")
    return out


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--jobs", type=int, default=0, help="burst size (default 3000, --quick 1000)")
    p.add_argument("--rate", type=float, default=100, help="latency phase: jobs per second")
    p.add_argument("--duration", type=float, default=0, help="latency phase: seconds (default 20, --quick 8)")
    p.add_argument("--poll-ms", type=float, default=10, help="result poll interval per job")
    p.add_argument("--celery-concurrency", type=int, default=2, help="prefork processes")
    p.add_argument("--systems", default="skyjobs,celery", help="which sides to run (for a partial run)")
    args = p.parse_args()
    if "celery" in args.systems:
        missing = [m for m in ("celery", "redis") if importlib.util.find_spec(m) is None]
        if missing:  # found before the skyjobs half runs, not after
            sys.exit(f"the Celery side needs {' and '.join(missing)}: `make bench` installs the bench extras "
                     "(or .venv/bin/pip install -e '.[dev,bench]')")
    save(NAME, run(main_async(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(main)
