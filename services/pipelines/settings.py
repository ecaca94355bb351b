"""The pipelines' guards and knobs from SKYJOBS_PIPELINE_* (read by the API and the pipeline workers)."""

from __future__ import annotations

import os

from services.config import Config, ConfigError
from services.pipelines.flow import Settings


def from_env(config: Config, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    base = Settings()

    def number(name: str, default: float) -> float:
        raw = env.get(f"SKYJOBS_PIPELINE_{name}", str(default))
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"SKYJOBS_PIPELINE_{name}={raw!r} is not a number") from exc

    hosts = env.get("SKYJOBS_PIPELINE_ALLOWED_HOSTS", "")
    return Settings(
        self_url=env.get("SKYJOBS_PIPELINE_SELF_URL", f"http://{config.host}:{config.port}").rstrip("/"),
        allowed_hosts=frozenset(h.strip().lower() for h in hosts.split(",") if h.strip()),
        step_timeout=number("STEP_TIMEOUT", base.step_timeout),
        run_timeout=number("RUN_TIMEOUT", base.run_timeout),
        max_body=int(number("MAX_BODY", base.max_body)),
        max_fanout=int(number("MAX_FANOUT", base.max_fanout)),
        max_steps=int(number("MAX_STEPS", base.max_steps)),
        expression_steps=int(number("EXPRESSION_STEPS", base.expression_steps)),
        expression_seconds=number("EXPRESSION_SECONDS", base.expression_seconds),
        expression_memory=int(number("EXPRESSION_MEMORY", base.expression_memory)),
        max_depth=int(number("MAX_DEPTH", base.max_depth)),
        inline_limit=int(number("INLINE_LIMIT", base.inline_limit)),
    )
