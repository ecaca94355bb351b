"""What a task of a work runs: the job's command line and the files placed in its directory."""

from __future__ import annotations

import uuid

from events.jobs import FileRef
from events.works import WorkSpec
from services.config import Config

JAR_NAME = "work.jar"
SQL_NAME = "work.sql"


def task_command(spec: WorkSpec, config: Config) -> tuple[str, FileRef | None, list[FileRef]]:
    """(command, binary, input files) of the job that runs one task of this work."""
    if spec.category == "SHELL":
        return spec.command or "true", None, []
    from services.works.flink import flink_jar_command, flink_sql_command  # only Flink works need them

    libs = None
    if not config.flink_home:
        from infra.flink import flink_libs

        libs = flink_libs()  # fetched from Maven Central on first use
    artifact = str(uuid.UUID(spec.lambda_id)) if spec.lambda_id else ""  # the data manager's spelling
    if spec.category == "FLINK_JAR":
        command = flink_jar_command(JAR_NAME, spec.main_class_name, list(spec.extra_params), config.flink_home,
                                          libs)
        return command, FileRef(artifact, JAR_NAME), []
    command = flink_sql_command(SQL_NAME, config.flink_home, libs)
    return command, None, [FileRef(artifact, SQL_NAME)]
