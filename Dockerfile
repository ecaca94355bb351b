# skyjobs processes (api, worker, executor, projector, router, pipelines, setup); Kafka and Postgres run
# from their own images. No C compiler here: executors start jobs through util-linux prlimit + setpriv.
# The example worker services run from it too: --entrypoint python ... -m workers.image_transform_service
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
COPY workers ./workers
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /data --no-create-home skyjobs \
 && mkdir -p /data \
 && chown skyjobs:skyjobs /data

USER skyjobs
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["skyjobs"]
CMD ["api"]
