-- /metrics counts the pipeline runs still running (services/api/metrics.py) without a scan.
CREATE INDEX IF NOT EXISTS pipeline_runs_running ON pipeline_runs (run_id) WHERE finished_at IS NULL;
