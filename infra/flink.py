"""Flink's jars from Maven Central, to run FLINK_JAR / FLINK_SQL works on a local MiniCluster.

When no Flink cluster is configured (``SKYJOBS_FLINK_HOME`` unset) a work's job runs Flink's own client in
one JVM: ``CliFrontend run`` for a jar, ``SqlClient -f`` (embedded mode) for a SQL file, both with
``execution.target: local``, so the job executes on a MiniCluster inside that JVM.  ``flink_libs()``
fetches the jars pinned by ``infra/flink/pom.xml`` once (about 190 MB) and writes the ``conf/`` dir those
clients read; ``services.works.flink`` builds the command lines that use it.

Not part of ``python -m infra install`` unless asked (``--flink``): the tests that need it fetch lazily.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from infra.local import INFRA_DIR, STATE_DIR, maven_libs

FLINK_POM = INFRA_DIR / "flink" / "pom.xml"
FLINK_LOG4J = INFRA_DIR / "flink" / "log4j2.properties"
FLINK_VERSION = re.search(r"<flink\.version>(.+?)</flink\.version>", FLINK_POM.read_text()).group(1)  # type: ignore[union-attr]

# Read by CliFrontend and the SQL client through FLINK_CONF_DIR=<libs>/conf.  Everything binds to the
# loopback interface (the MiniCluster and the SQL client's embedded gateway pick free ports themselves), so
# concurrent jobs do not collide and nothing is reachable from outside.
CONFIG_YAML = """\
# Written by infra/flink.py: Flink's configuration for a job's local MiniCluster (SKYJOBS_FLINK_HOME unset).
execution:
  target: local
parallelism:
  default: 1
# The MiniCluster lives as long as the client's JVM: an INSERT must run to its end before the script goes on.
table:
  dml-sync: true
# A query's rows go to stdout (non-interactive runs accept no other result mode).
sql-client:
  execution:
    result-mode: tableau
jobmanager:
  bind-host: localhost
  rpc:
    address: localhost
taskmanager:
  bind-host: localhost
  host: localhost
rest:
  address: localhost
  bind-address: localhost
"""

# What a distribution's config.yaml puts in env.java.opts.all for Java 17 (bin/flink and bin/sql-client.sh
# pass them to the JVM): Flink reflects into these JDK internals.  Used as a java @argument-file.
JVM_ARGS = "\n".join(
    [f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/sun.net.util", "java.rmi/sun.rmi.registry",
        "jdk.compiler/com.sun.tools.javac.api", "jdk.compiler/com.sun.tools.javac.file",
        "jdk.compiler/com.sun.tools.javac.parser", "jdk.compiler/com.sun.tools.javac.tree",
        "jdk.compiler/com.sun.tools.javac.util", "java.security.jgss/sun.security.krb5",
    )]
    + [f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in (
        "java.lang", "java.net", "java.io", "java.nio", "sun.nio.ch", "java.lang.reflect", "java.text",
        "java.time", "java.util", "java.util.concurrent", "java.util.concurrent.atomic",
        "java.util.concurrent.locks",
    )]
) + "\n"  # fmt: skip


def flink_libs(cache_dir: Path | None = None) -> Path:
    """Ensure Flink's jars and conf are present and return the libs dir (``.skyjobs/flink-libs-<version>``).

    Idempotent and safe to call from several processes at once (a file lock); the marker file holds a hash
    of everything that went in, so a half-copied dir or an edited pom triggers a new copy.  The dir is made
    readable by all users: jobs run as ``nobody``.  Layout: ``*.jar`` (the class path is ``<libs>/*``),
    ``conf/config.yaml``, ``conf/log4j2.properties`` and ``conf/jvm.args``.
    """
    libs = Path(cache_dir) if cache_dir else STATE_DIR / f"flink-libs-{FLINK_VERSION}"
    stamp = hashlib.sha256(
        FLINK_POM.read_bytes() + FLINK_LOG4J.read_bytes() + CONFIG_YAML.encode() + JVM_ARGS.encode()
    ).hexdigest()
    return maven_libs(FLINK_POM, libs, stamp, "Flink", finish=_add_conf)


def _add_conf(libs: Path) -> None:
    conf = libs / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(CONFIG_YAML)
    (conf / "jvm.args").write_text(JVM_ARGS)
    shutil.copyfile(FLINK_LOG4J, conf / "log4j2.properties")
    _make_readable(libs)


def _make_readable(root: Path) -> None:
    """chmod a+rX on root and everything below it."""
    for dirpath, _, filenames in os.walk(root):
        for path in [Path(dirpath), *(Path(dirpath) / name for name in filenames)]:
            mode = path.stat().st_mode
            extra = 0o555 if path.is_dir() or mode & 0o111 else 0o444
            path.chmod(mode | extra)


if __name__ == "__main__":
    print(flink_libs())
