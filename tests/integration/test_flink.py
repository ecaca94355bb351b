"""FLINK_JAR and FLINK_SQL command lines (services.works.flink) run real Flink jobs, as a job runs them.

Each command goes through ``/bin/sh -c`` in a fresh working dir holding the jar or SQL file, with the job
defaults' rlimits (RLIMIT_AS 2 GiB, ...) and, when the tests run as root, as ``nobody`` like the executor.
Flink's jars come from Maven Central on first use (infra.flink.flink_libs(), about 190 MB, cached in
.skyjobs/); the word-count jar is compiled from tests/fixtures/flink/WordCount.java with javac.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.config import JobLimits
from services.works.flink import flink_jar_command, flink_sql_command

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "flink"
MAIN_CLASS = "skyjobs.fixtures.WordCount"
JOB_USER = "nobody"

pytestmark = [
    pytest.mark.flink,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not (shutil.which("java") and shutil.which("javac") and shutil.which("mvn")),
        reason="needs java, javac and mvn (python -m infra install; javac: a JDK)",
    ),
]


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def libs() -> Path:
    from infra.flink import flink_libs

    return flink_libs()


@pytest.fixture(scope="module")
def wordcount_jar(libs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WordCount.java compiled against Flink's jars, in a jar whose manifest names its main class."""
    build = tmp_path_factory.mktemp("wordcount")
    classes = build / "classes"
    subprocess.run(
        ["javac", "-nowarn", "-cp", f"{libs}/*", "-d", str(classes), str(FIXTURES / "WordCount.java")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    jar = build / "wordcount.jar"
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("META-INF/MANIFEST.MF", f"Manifest-Version: 1.0\nMain-Class: {MAIN_CLASS}\n\n")
        for path in sorted(classes.rglob("*.class")):
            zf.write(path, path.relative_to(classes).as_posix())
    return jar


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is 0700 root, out of reach for the job user.
    path = Path(tempfile.mkdtemp(prefix="skyjobs-test-flink-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_job(command: str, workdir: Path, files: dict[str, Path | str], timeout: float = 180) -> Finished:
    """Run command like the executor runs a job: /bin/sh -c in workdir (its HOME), job rlimits, as nobody."""
    for name, source in files.items():
        target = workdir / name
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        else:
            target.write_text(source)
        target.chmod(0o644)
    limits = JobLimits()
    prefix = [
        "prlimit", f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_seconds}",
        f"--fsize={limits.file_size_bytes}", f"--nproc={limits.processes}", "--",
    ]  # fmt: skip
    if os.geteuid() == 0:
        user = pwd.getpwnam(JOB_USER)
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *prefix]
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
    }
    result = subprocess.run(
        [*prefix, "/bin/sh", "-c", command], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return Finished(result.returncode, result.stdout, result.stderr)


def word_counts(stdout: str) -> dict[str, int]:
    """The ``word=count`` lines WordCount prints."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)=(\d+)$", stdout, re.MULTILINE)}


def table_rows(stdout: str) -> dict[str, int]:
    """The ``| word | count |`` rows of the SQL client's tableau output."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^\|\s*(\w+)\s*\|\s*(\d+)\s*\|$", stdout, re.MULTILINE)}


def test_flink_jar_runs_main_class_with_params(libs: Path, wordcount_jar: Path, workdir: Path) -> None:
    command = flink_jar_command("work.jar", MAIN_CLASS, ["to be or", "not to be"], None, libs)
    done = run_job(command, workdir, {"work.jar": wordcount_jar})
    assert done.returncode == 0, done.stderr
    assert word_counts(done.stdout) == {"to": 2, "be": 2, "or": 1, "not": 1}, done.stdout


def test_flink_jar_takes_main_class_from_manifest(libs: Path, wordcount_jar: Path, workdir: Path) -> None:
    command = flink_jar_command("my job.jar", None, ["it's", "a", "b a"], None, libs)
    done = run_job(command, workdir, {"my job.jar": wordcount_jar})
    assert done.returncode == 0, done.stderr
    assert word_counts(done.stdout) == {"it's": 1, "a": 2, "b": 1}, done.stdout


def test_flink_jar_unknown_main_class_fails(libs: Path, wordcount_jar: Path, workdir: Path) -> None:
    command = flink_jar_command("work.jar", "no.such.Main", [], None, libs)
    done = run_job(command, workdir, {"work.jar": wordcount_jar})
    assert done.returncode != 0
    assert "no.such.Main" in done.stdout + done.stderr


def test_flink_sql_runs_the_file(libs: Path, workdir: Path) -> None:
    command = flink_sql_command("work.sql", None, libs)
    done = run_job(command, workdir, {"work.sql": FIXTURES / "count.sql"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert table_rows(done.stdout) == {"to": 2, "be": 2, "or": 1, "not": 1}, done.stdout
    assert (workdir / ".flink-sql-history").is_file(), done.stderr  # not in ~, which nobody cannot write


def test_flink_sql_insert_runs_to_the_end_and_a_failing_statement_fails_the_job(
    libs: Path, workdir: Path
) -> None:
    script = """
        CREATE TEMPORARY TABLE sink (word STRING, cnt BIGINT) WITH ('connector' = 'print');
        INSERT INTO sink SELECT word, COUNT(*) FROM (VALUES ('x'), ('y'), ('x')) AS t(word) GROUP BY word;
        SELECT * FROM no_such_table;
        SELECT 'never' AS reached;
    """
    done = run_job(flink_sql_command("work.sql", None, libs), workdir, {"work.sql": script})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "+U[x, 2]" in done.stdout  # the INSERT's job ran to its end before the client went on
    assert "no_such_table" in done.stdout
    assert "reached |" not in done.stdout  # the client stopped at the failing statement


def test_flink_home_commands_use_the_distribution_scripts(workdir: Path) -> None:
    """With SKYJOBS_FLINK_HOME the distribution's bin/flink and bin/sql-client.sh run, with JVM_ARGS set."""
    home = Path(tempfile.mkdtemp(prefix="skyjobs-test-flink-home-"))
    try:
        home.chmod(0o755)
        (home / "bin").mkdir(mode=0o755)
        fake = '#!/bin/sh\necho "JVM_ARGS=$JVM_ARGS"\nfor a in "$@"; do echo "arg=$a"; done\n'
        fake_sql = (
            fake
            + 'if grep -q fail "$2"; then echo "Flink SQL> [ERROR] Could not execute SQL statement."; fi\n'
        )
        for name, text in (("flink", fake), ("sql-client.sh", fake_sql)):
            (home / "bin" / name).write_text(text)
            (home / "bin" / name).chmod(0o755)

        done = run_job(
            flink_jar_command("w.jar", "a.Main", ["x y", "$HOME"], str(home), None), workdir, {"w.jar": "jar"}
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[1:] == ["arg=run", "arg=-c", "arg=a.Main", "arg=w.jar", "arg=x y", "arg=$HOME"]
        assert "-Xmx" in lines[0]

        ok = run_job(flink_sql_command("w.sql", str(home), None), workdir, {"w.sql": "SELECT 1;"})
        assert (
            ok.returncode == 0
            and "arg=-f\narg=w.sql\narg=-hist\narg=" + str(workdir) + "/.flink-sql-history\n" in ok.stdout
        ), ok.stdout + ok.stderr
        failed = run_job(flink_sql_command("w.sql", str(home), None), workdir, {"w.sql": "SELECT fail;"})
        assert failed.returncode == 1 and "[ERROR]" in failed.stdout, failed.stdout + failed.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_commands_need_flink_home_or_libs() -> None:
    with pytest.raises(ValueError):
        flink_jar_command("w.jar", None, [], None, None)
    with pytest.raises(ValueError):
        flink_sql_command("w.sql", None, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="jobs run as another user only when started as root")
def test_libs_the_job_user_cannot_reach_fail_with_a_clear_error(libs: Path, workdir: Path) -> None:
    closed = Path(tempfile.mkdtemp(prefix="skyjobs-test-closed-"))  # 0700: nobody may not enter it
    try:
        shutil.copytree(libs / "conf", closed / "libs" / "conf")
        done = run_job(flink_jar_command("w.jar", "a.Main", [], None, closed / "libs"), workdir, {"w.jar": "jar"})
        assert done.returncode == 126, done
        assert "cannot be read by this job's user (nobody)" in done.stderr and "SKYJOBS_FLINK_HOME" in done.stderr
    finally:
        shutil.rmtree(closed, ignore_errors=True)
