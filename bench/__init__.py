"""Benchmarks of the foundation issue: each `python -m bench.<name>` starts its own fresh local stack.

    bench.accept          accepted POST /api/job/run per second, p50/p99 of the call
    bench.latency         submit -> succeeded visible in job_info for `true`, open loop at 100 jobs/s
    bench.throughput      executed trivial jobs per second (a burst of `true` jobs)
    bench.celery_compare  skyjobs vs Celery + Redis on the same commands: throughput and latency ratios
    bench.projection_lag  projection lag at 1,000 events/s
    bench.job_info        GET job_info at 1,000 requests/s with 1,000,000 jobs in the table
    bench.run_all         all of the above in turn (what `make bench` runs), then one summary table

Results go to stdout and, as JSON, to .skyjobs/bench/<name>.json (BENCHMARKS.md explains them).
"""
