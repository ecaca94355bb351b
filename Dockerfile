# skyjobs processes (api, worker, projector, setup); Kafka and Postgres run from their own images.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SKYJOBS_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml ./
COPY services ./services
COPY events ./events
COPY projections ./projections
COPY infra ./infra
COPY schemas ./schemas
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /data --no-create-home skyjobs \
 && mkdir -p /data \
 && chown skyjobs:skyjobs /data

USER skyjobs
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["skyjobs"]
CMD ["api"]
