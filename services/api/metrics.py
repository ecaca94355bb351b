"""`GET /metrics` in Prometheus' text format, computed from the projections at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.jobs.lifecycle import STATES

_LATENCY = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at)),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - submitted_at)),
       count(*)
FROM jobs WHERE finished_at > now() - interval '5 minutes' AND started_at IS NOT NULL
"""


async def _families(request: Request) -> list[Any]:
    pool = request.app.state.pool
    tail = request.app.state.tail
    jobs = GaugeMetricFamily("skyjobs_jobs", "Jobs by state (not deleted)", labels=["state"])
    counts = {r["state"]: r["n"] for r in await pool.fetch("SELECT state, n FROM job_counts")}  # kept by the projector
    for state in STATES:
        jobs.add_metric([state], counts.get(state, 0))
    queue = GaugeMetricFamily("skyjobs_queue_depth", "Jobs waiting for an executor")
    queue.add_metric([], counts.get("queued", 0))
    lag = GaugeMetricFamily("skyjobs_projection_lag_events", "Events written but not yet projected",
                            labels=["topic"])
    stored = {(r["topic"], r["partition"]): r["next_offset"] for r in await pool.fetch(
        "SELECT topic, partition, next_offset FROM projector_offsets")}
    per_topic: dict[str, int] = {}
    for (topic, partition), end in (await tail.ends()).items():
        per_topic[topic] = per_topic.get(topic, 0) + max(0, end - stored.get((topic, partition), 0))
    for topic, behind in sorted(per_topic.items()):
        lag.add_metric([topic], behind)
    age = GaugeMetricFamily("skyjobs_projection_last_commit_age_seconds",
                            "Seconds since the newest event the projections hold occurred")
    newest = await pool.fetchval("SELECT extract(epoch FROM now() - max(occurred_at)) FROM event_log")
    age.add_metric([], float(newest or 0))
    latency = GaugeMetricFamily("skyjobs_job_latency_seconds",
                                "Jobs finished in the last 5 minutes: submit to start and submit to finish",
                                labels=["phase", "quantile"])
    row = await pool.fetchrow(_LATENCY)
    if row and row[2]:
        for phase, values in (("start", row[0]), ("finish", row[1])):
            for q, value in zip(("0.5", "0.99"), values, strict=True):
                latency.add_metric([phase, q], float(value))
    tasks = GaugeMetricFamily("skyjobs_work_tasks", "Tasks of works by state (from their jobs)", labels=["state"])
    for r in await pool.fetch(
        "SELECT CASE WHEN t.skipped IS NOT NULL THEN 'skipped' ELSE coalesce(j.state, 'queued') END AS state, "
        "count(*) AS n FROM work_tasks t LEFT JOIN jobs j ON j.job_id = t.job_id GROUP BY 1"
    ):
        tasks.add_metric([r["state"]], r["n"])
    return [jobs, queue, lag, age, latency, tasks, *await _pipeline_families(pool)]


_STEP_LATENCY = """
SELECT method, percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY duration_ms), count(*)
FROM pipeline_steps WHERE responded_at > now() - interval '5 minutes' GROUP BY method
"""
_RUN_LATENCY = """
SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
       count(*)
FROM pipeline_runs WHERE finished_at > now() - interval '5 minutes' AND started_at IS NOT NULL
"""


async def _pipeline_families(pool: Any) -> list[Any]:
    """Pipeline steps and runs of the last 5 minutes (issue 6 asks for step latency here)."""
    steps = GaugeMetricFamily("skyjobs_pipeline_step_latency_seconds",
                              "Pipeline steps answered in the last 5 minutes: request to response, by method",
                              labels=["method", "quantile"])
    count = GaugeMetricFamily("skyjobs_pipeline_steps_recent", "Pipeline steps answered in the last 5 minutes",
                              labels=["method"])
    for r in await pool.fetch(_STEP_LATENCY):
        for q, value in zip(("0.5", "0.9", "0.99"), r[1], strict=True):
            steps.add_metric([r["method"] or "", q], float(value) / 1000)
        count.add_metric([r["method"] or ""], r[2])
    runs = GaugeMetricFamily("skyjobs_pipeline_run_latency_seconds",
                             "Pipeline runs ended in the last 5 minutes: start to end", labels=["quantile"])
    row = await pool.fetchrow(_RUN_LATENCY)
    if row and row[1]:
        for q, value in zip(("0.5", "0.9", "0.99"), row[0], strict=True):
            runs.add_metric([q], float(value))
    states = GaugeMetricFamily("skyjobs_pipeline_runs", "Pipeline runs by state (last 5 minutes, and running)",
                               labels=["state"])
    for r in await pool.fetch("SELECT state, count(*) AS n FROM pipeline_runs WHERE finished_at IS NULL "
                              "OR finished_at > now() - interval '5 minutes' GROUP BY state"):
        states.add_metric([r["state"]], r["n"])
    return [steps, count, runs, states]


class _Snapshot:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


async def metrics(request: Request) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await _families(request)))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


ROUTES = [Route("/metrics", metrics, methods=["GET"])]
