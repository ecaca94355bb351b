"""The shell command lines that run a FLINK_JAR or FLINK_SQL work's task as a job.

A job runs ``/bin/sh -c <command>`` in its own working directory (also its ``HOME``), where the work's jar
or SQL file has been placed, as an unprivileged user under rlimits (RLIMIT_AS 2 GiB by default).

* With ``flink_home`` (``SKYJOBS_FLINK_HOME``, a Flink distribution configured for a real cluster), the
  distribution's own scripts submit to that cluster: ``bin/flink run`` and ``bin/sql-client.sh -f``.
* Without it, Flink's own clients run from the jars ``infra.flink.flink_libs()`` fetched (``libs``):
  ``CliFrontend run`` and ``SqlClient -f`` with ``execution.target: local`` (``<libs>/conf``), so the job
  executes on a MiniCluster inside that one JVM.

Either way the client JVM gets explicit memory limits: the JVM's own defaults (a heap of a quarter of the
machine's memory, glibc arenas per thread) reserve more address space than RLIMIT_AS allows.
"""

from __future__ import annotations

import shlex
from pathlib import Path

# Sized for a tiny-to-small job in one JVM (client + JobManager + TaskManager) under RLIMIT_AS = 2 GiB:
# heap, metaspace, code cache, class space, direct memory (network buffers) and thread stacks all reserve
# address space up front.  One GC thread and C1 only: less memory, faster start for short jobs.
LOCAL_JVM_FLAGS = (
    "-Xms64m", "-Xmx384m", "-Xss512k", "-XX:MaxDirectMemorySize=256m", "-XX:MaxMetaspaceSize=256m",
    "-XX:CompressedClassSpaceSize=64m", "-XX:ReservedCodeCacheSize=64m", "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1", "-XX:ActiveProcessorCount=1", "-XX:+ExitOnOutOfMemoryError",
    "-Dorg.jline.terminal.dumb=true",
)  # fmt: skip
# The client only (it submits to the cluster): bin/flink and bin/sql-client.sh add $JVM_ARGS to its JVM.
CLIENT_JVM_FLAGS = (
    "-Xmx256m", "-Xss512k", "-XX:MaxMetaspaceSize=192m", "-XX:CompressedClassSpaceSize=64m",
    "-XX:ReservedCodeCacheSize=64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
)  # fmt: skip
# glibc reserves 64 MiB of address space per malloc arena, up to 8 per core: cap them.
MALLOC_ENV = "MALLOC_ARENA_MAX=2"
TMP_DIR = ".flink-tmp"  # in the working dir: blobs, the RPC system's jar, spill files, web uploads
SQL_OUT = ".flink-sql.out"  # the SQL client's stdout, read back for its [ERROR] lines
SQL_HISTORY = ".flink-sql-history"
CLI_FRONTEND = "org.apache.flink.client.cli.CliFrontend"
SQL_CLIENT = "org.apache.flink.table.client.SqlClient"


def flink_jar_command(
    jar: str, main_class: str | None, extra_params: list[str], flink_home: str | None, libs: Path | None
) -> str:
    """``flink run [-c main_class] <jar> <extra_params...>`` on the cluster of flink_home or a local one.

    Without main_class Flink takes the jar manifest's ``Main-Class``.
    """
    args = [shlex.quote(a) for a in ["run", *(["-c", main_class] if main_class else []), jar, *extra_params]]
    if flink_home:
        return _distribution(flink_home, "flink", args)
    return _local(_need(libs), CLI_FRONTEND, args)


def flink_sql_command(sql_file: str, flink_home: str | None, libs: Path | None) -> str:
    """``sql-client.sh -f <sql_file>`` (embedded mode) on the cluster of flink_home or a local one.

    The client stops at the first failing statement but still exits 0, so its output is kept in a file and
    the command fails (exit 1) when the client printed an ``[ERROR]`` line.  A query's rows reach stdout in
    the ``tableau`` result mode (the local conf's default; with flink_home the script may need
    ``SET 'sql-client.execution.result-mode' = 'tableau';``); the local conf also makes an INSERT wait for
    its job (``table.dml-sync``), as the MiniCluster ends with the client.
    """
    # The client writes a history file even then: here, not in ~ (user.home may be unwritable for the job).
    args = ["-f", shlex.quote(sql_file), "-hist", f'"$PWD"/{SQL_HISTORY}']
    if flink_home:
        client = _distribution(flink_home, "sql-client.sh", args)
    else:
        client = _local(_need(libs), SQL_CLIENT, args)
    # An error line is the client's prompt and/or an ANSI colour code, then [ERROR]; table rows start with
    # "|" or "+" and the print connector's rows with "+I[", "-U[", ...
    check = f"grep -Eq '^(Flink SQL> )?[^|+]{{0,12}}\\[ERROR\\]' {SQL_OUT}"
    return f"{client} > {SQL_OUT}; rc=$?; cat {SQL_OUT}; if [ $rc -eq 0 ] && {check}; then rc=1; fi; exit $rc"


# The helpers below take args already quoted for the shell.


def _distribution(flink_home: str, script: str, args: list[str]) -> str:
    jvm_args = shlex.quote(" ".join(CLIENT_JVM_FLAGS))
    executable = shlex.quote(str(Path(flink_home) / "bin" / script))
    return " ".join([f"JVM_ARGS={jvm_args}", MALLOC_ENV, executable, *args])


def _local(libs: Path, main: str, args: list[str]) -> str:
    conf = libs / "conf"
    env = [f"FLINK_CONF_DIR={shlex.quote(str(conf))}", MALLOC_ENV]
    java = [
        "java",
        shlex.quote(f"@{conf / 'jvm.args'}"),  # --add-opens/--add-exports, as a distribution passes them
        *LOCAL_JVM_FLAGS,
        # Absolute paths: the job's HOME and a temp dir in its working dir ($PWD expands in the job's shell).
        f'-Djava.io.tmpdir="$PWD"/{TMP_DIR}',
        '-Duser.home="$PWD"',
        shlex.quote(f"-Dlog4j.configurationFile={conf / 'log4j2.properties'}"),
        "-cp", shlex.quote(f"{libs}/*"),
        main,
        *args,
    ]  # fmt: skip
    # Jobs run as another user: a folder above the libraries that others may not enter (a private home,
    # a 0700 temp dir) would otherwise end in java's "could not open .../jvm.args".
    reachable = (f'[ -r {shlex.quote(str(conf / "jvm.args"))} ] || {{ echo "skyjobs: Flink\'s libraries in "'
                 f'{shlex.quote(str(libs))}" cannot be read by this job\'s user ($(id -un)): keep the skyjobs '
                 'directory where other users may enter, or set SKYJOBS_FLINK_HOME" >&2; exit 126; };')
    return " ".join([reachable, f"mkdir -p {TMP_DIR} &&", *env, *java])


def _need(libs: Path | None) -> Path:
    if libs is None:
        raise ValueError("no Flink: give flink_home (SKYJOBS_FLINK_HOME) or libs (infra.flink.flink_libs())")
    return libs
