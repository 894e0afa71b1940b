#!/usr/bin/env python3
"""Beam's Flink and Spark engines for dpbeam: fetched from registries, checked, cached; a local Flink cluster.

    python scripts/engines.py fetch              # job server jars + a Flink distribution, into .engines/
    python scripts/engines.py paths              # where they are (JSON)
    python scripts/engines.py flink start DIR    # JobManager + TaskManager(s) + SDK worker pool on 127.0.0.1
    python scripts/engines.py flink options DIR  # the Beam options that run a dpbeam command there
    python scripts/engines.py flink stop DIR
    python scripts/engines.py spark options      # the Beam options for Spark local[2]

Nothing is downloaded at pipeline run time: Beam gets the job server jars by path
(``--flink_job_server_jar``, ``--spark_job_server_jar``), never from the network.

Where each piece comes from, and why (the README's "Run on Flink / Spark" says the same):
- Job servers: Maven Central. This machine's registry does not serve Beam's shaded job server jars,
  but it serves the runners and all their dependencies at Beam 2.62.0 (the newest that resolves).
  ``mvn dependency:copy-dependencies --strict-checksums`` fetches them from the poms in
  deploy/engines/, and a launcher jar (a manifest with Main-Class and Class-Path, nothing else) makes
  ``java -jar`` start the same job server Beam would have downloaded.
- Flink 1.19.3 for a session cluster: PyPI. Maven does not serve ``flink-dist`` here; PyFlink's wheel
  carries bin/ and conf/, and ``apache-flink-libraries`` carries lib/. Both are pinned by hash
  (deploy/engines/flink-distribution.txt) and unpacked, never installed (they pin an old Beam).

Only the standard library is used, so this runs before and outside the project's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

LOG = logging.getLogger("engines")
REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "deploy" / "engines"
ENGINES_DIR = Path(os.environ.get("DPBEAM_ENGINES_DIR", REPO / ".engines"))

BEAM_JAVA_VERSION = "2.62.0"
FLINK_VERSION = "1.19.3"
FLINK_MINOR = "1.19"
SPARK_VERSION = "3.5.7"

# Spark 3.5 on Java 17 needs these packages opened to it; `java -jar` reads them from the manifest
# (JEP 261), so the job server needs no JVM flags from Beam. Flink's runner needs none.
SPARK_ADD_OPENS = (
    "java.base/java.lang java.base/java.lang.invoke java.base/java.lang.reflect java.base/java.io "
    "java.base/java.net java.base/java.nio java.base/java.util java.base/java.util.concurrent "
    "java.base/java.util.concurrent.atomic java.base/sun.nio.ch java.base/sun.nio.cs "
    "java.base/sun.security.action java.base/sun.util.calendar")


@dataclass(frozen=True)
class JobServerSpec:
    """One Beam job server: the pom that lists its jars, its Java entry point, its jar name."""
    name: str
    pom: Path
    main_class: str
    add_opens: str = ""

    @property
    def folder(self) -> Path:
        return ENGINES_DIR / self.name

    @property
    def jar(self) -> Path:
        return self.folder / f"beam-{self.name}-{BEAM_JAVA_VERSION}.jar"


FLINK_JOB_SERVER = JobServerSpec(
    f"flink-{FLINK_MINOR}-job-server", SPECS / "flink-job-server.pom.xml",
    "org.apache.beam.runners.flink.FlinkJobServerDriver")
SPARK_JOB_SERVER = JobServerSpec(
    "spark-3-job-server", SPECS / "spark-job-server.pom.xml",
    "org.apache.beam.runners.spark.SparkJobServerDriver", add_opens=SPARK_ADD_OPENS)
FLINK_HOME = ENGINES_DIR / f"flink-{FLINK_VERSION}"
FLINK_DISTRIBUTION_SPEC = SPECS / "flink-distribution.txt"
STAMP = ".fetched"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_current(folder: Path, spec_file: Path) -> bool:
    """A cached engine is reused only if it was completed from the very same spec file."""
    stamp = folder / STAMP
    return stamp.is_file() and stamp.read_text().strip() == _sha256(spec_file)


def _publish(staging: Path, folder: Path, spec_file: Path) -> None:
    """Move a finished staging folder into place: a half-fetched engine never sits under its final name."""
    (staging / STAMP).write_text(_sha256(spec_file) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


@contextlib.contextmanager
def _staging(name: str) -> Iterator[Path]:
    """A private folder beside the cache, removed unless it was published."""
    ENGINES_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=ENGINES_DIR))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _manifest_line(text: str) -> bytes:
    """A manifest header wrapped at 72 bytes, continuation lines starting with a space (JAR spec)."""
    raw = text.encode()
    pieces = [raw[:72]]
    raw = raw[72:]
    while raw:
        pieces.append(b" " + raw[:71])
        raw = raw[71:]
    return b"\r\n".join(pieces) + b"\r\n"


def write_launcher_jar(jar: Path, main_class: str, libraries: list[str], add_opens: str = "") -> None:
    """A jar holding only a manifest: ``java -jar`` runs ``main_class`` over ``libraries`` (paths
    relative to the jar's folder)."""
    manifest = _manifest_line("Manifest-Version: 1.0") + _manifest_line(f"Main-Class: {main_class}")
    if add_opens:
        manifest += _manifest_line(f"Add-Opens: {add_opens}")
    manifest += _manifest_line("Class-Path: " + " ".join(libraries)) + b"\r\n"
    with zipfile.ZipFile(jar, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF", manifest)


def fetch_job_server(spec: JobServerSpec) -> Path:
    """Fetch one job server's jars with Maven (checksums enforced), write its launcher jar, check it starts."""
    if _is_current(spec.folder, spec.pom):
        LOG.info("%s: cached in %s", spec.name, spec.folder)
        return spec.jar
    ENGINES_DIR.mkdir(parents=True, exist_ok=True)
    with _staging(spec.name) as staging:
        _fetch_job_server_into(spec, staging)
        _publish(staging, spec.folder, spec.pom)
    LOG.info("%s: launcher %s", spec.name, spec.jar)
    return spec.jar


def _fetch_job_server_into(spec: JobServerSpec, staging: Path) -> None:
    LOG.info("%s: fetching its jars from Maven Central (%s)", spec.name, spec.pom.name)
    maven = subprocess.run(["mvn", "-B", "-q", "-Dstyle.color=never", "--strict-checksums", "-f", str(spec.pom),
                            "dependency:copy-dependencies", f"-DoutputDirectory={staging / 'lib'}",
                            "-DincludeScope=runtime"], capture_output=True, text=True)
    if maven.returncode != 0:  # Maven's own report says which artifact or checksum failed
        raise RuntimeError(f"{spec.name}: Maven could not fetch the jars of {spec.pom}:\n"
                           f"{maven.stdout[-4000:]}{maven.stderr[-2000:]}")
    libraries = sorted(f"lib/{jar.name}" for jar in (staging / "lib").glob("*.jar"))
    jar = staging / spec.jar.name
    write_launcher_jar(jar, spec.main_class, libraries, spec.add_opens)
    # `--help` loads the driver and its option parser: a missing or broken jar fails here, not in a test.
    check = subprocess.run(["java", "-jar", str(jar), "--help"], capture_output=True, text=True, timeout=120)
    if "Usage:" not in check.stdout + check.stderr:
        raise RuntimeError(f"{spec.name}: `java -jar {jar.name} --help` did not start the job server:\n"
                           f"{check.stdout[-2000:]}{check.stderr[-2000:]}")
    LOG.info("%s: %d jars", spec.name, len(libraries))


def fetch_flink_distribution() -> Path:
    """Assemble FLINK_HOME (bin/, conf/, lib/) from PyFlink's two packages, pinned by hash."""
    if _is_current(FLINK_HOME, FLINK_DISTRIBUTION_SPEC):
        LOG.info("Flink %s: cached in %s", FLINK_VERSION, FLINK_HOME)
        return FLINK_HOME
    with _staging("flink") as staging:
        _assemble_flink_into(staging)
        _publish(staging, FLINK_HOME, FLINK_DISTRIBUTION_SPEC)
    LOG.info("Flink %s: %s", FLINK_VERSION, FLINK_HOME)
    return FLINK_HOME


def _assemble_flink_into(staging: Path) -> None:
    downloads = staging / "downloads"
    LOG.info("Flink %s: downloading PyFlink's packages from PyPI (hash-pinned)", FLINK_VERSION)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--require-hashes", "-r", str(FLINK_DISTRIBUTION_SPEC), "-d", str(downloads)],
                   check=True)
    home = staging / "home"
    [wheel] = downloads.glob(f"apache_flink-{FLINK_VERSION}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(("pyflink/bin/", "pyflink/conf/")) and not member.endswith("/"):
                target = home / member.removeprefix("pyflink/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
    [libraries] = downloads.glob(f"apache-flink-libraries-{FLINK_VERSION}.tar.gz")
    prefix = f"apache-flink-libraries-{FLINK_VERSION}/deps/"
    with tarfile.open(libraries) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.startswith((prefix + "lib/", prefix + "bin/")):
                target = home / member.name.removeprefix(prefix)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
    for script in (home / "bin").iterdir():
        script.chmod(0o755)
    if not (home / "lib" / f"flink-dist-{FLINK_VERSION}.jar").is_file():
        raise RuntimeError(f"Flink {FLINK_VERSION}: flink-dist jar missing from {libraries.name}")
    shutil.rmtree(downloads)
    for item in home.iterdir():
        item.rename(staging / item.name)
    home.rmdir()


def fetch_all() -> dict[str, str]:
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise SystemExit(f"engines: `{tool}` is not on PATH; the Flink/Spark engines need Java 17 and Maven")
    fetch_job_server(FLINK_JOB_SERVER)
    fetch_job_server(SPARK_JOB_SERVER)
    fetch_flink_distribution()
    return paths()


def paths() -> dict[str, str]:
    return {"flink_job_server_jar": str(FLINK_JOB_SERVER.jar), "spark_job_server_jar": str(SPARK_JOB_SERVER.jar),
            "flink_home": str(FLINK_HOME), "flink_version": FLINK_VERSION, "spark_version": SPARK_VERSION,
            "beam_java_version": BEAM_JAVA_VERSION}


def require_fetched() -> None:
    missing = [spec.name for spec in (FLINK_JOB_SERVER, SPARK_JOB_SERVER) if not spec.jar.is_file()]
    if not (FLINK_HOME / "bin" / "jobmanager.sh").is_file():
        missing.append(f"flink-{FLINK_VERSION}")
    if missing:
        raise RuntimeError(f"engines not fetched ({', '.join(missing)}): run `python scripts/engines.py fetch`")


# --------------------------------------------------------------------------------------- local cluster

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited early:\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{log.name}: port {port} not open after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _flink_config(ports: dict[str, int], slots: int, parallelism: int, work: Path) -> str:
    """Flink's config.yaml for a session cluster on 127.0.0.1 that survives a lost TaskManager.

    Heartbeats are short so a killed TaskManager is noticed in seconds, not Flink's default 50 s;
    the restart strategy re-runs failed work up to 5 times. Beam's batch translation opens one network
    channel per exchange of every stage, so a TaskManager needs more network buffers than Flink's
    default fraction of a small process gives (384 MiB: 12,288 buffers of 32 KiB)."""
    return f"""\
jobmanager:
  bind-host: 127.0.0.1
  rpc: {{address: 127.0.0.1, port: {ports['rpc']}}}
  memory: {{process: {{size: 1024m}}}}
  execution: {{failover-strategy: region}}
taskmanager:
  bind-host: 127.0.0.1
  host: 127.0.0.1
  numberOfTaskSlots: {slots}
  memory: {{process: {{size: 2048m}}, network: {{min: 384m, max: 384m}}}}
parallelism: {{default: {parallelism}}}
rest: {{address: 127.0.0.1, bind-address: 127.0.0.1, port: {ports['rest']}}}
blob: {{server: {{port: '{ports['blob']}'}}}}
heartbeat: {{interval: 1000, timeout: 8000}}
restart-strategy:
  type: fixed-delay
  fixed-delay: {{attempts: 5, delay: 2 s}}
io: {{tmp: {{dirs: {work / 'tmp'}}}}}
web: {{tmpdir: {work / 'web'}}}
"""


@dataclass
class LocalFlinkCluster:
    """A Flink session cluster on 127.0.0.1: one JobManager and TaskManagers as separate JVMs, plus a
    Python SDK worker pool (Beam's EXTERNAL environment) that the TaskManagers ask for workers.

    This is how a real deployment is laid out (deploy/flink/), on one machine."""
    work: Path
    taskmanagers: int = 1
    slots: int = 2
    parallelism: int = 2
    python: str = sys.executable
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def rest_address(self) -> str:
        return f"127.0.0.1:{self.ports['rest']}"

    def beam_options(self) -> list[str]:
        """The Beam options that run a dpbeam command on this cluster."""
        return flink_options(self.rest_address, f"127.0.0.1:{self.ports['pool']}", self.parallelism,
                             self.work / "artifacts")

    def start(self) -> "LocalFlinkCluster":
        require_fetched()
        self.work.mkdir(parents=True, exist_ok=True)
        for name in ("conf", "log", "tmp", "web", "artifacts"):
            (self.work / name).mkdir(exist_ok=True)
        self.ports = {name: free_port() for name in ("rpc", "rest", "blob", "pool")}
        conf = self.work / "conf"
        for logging_file in (FLINK_HOME / "conf").glob("log4j*.properties"):
            shutil.copy(logging_file, conf / logging_file.name)
        (conf / "config.yaml").write_text(_flink_config(self.ports, self.slots, self.parallelism, self.work))
        try:
            self._start_worker_pool()
            self._start("jobmanager", [str(FLINK_HOME / "bin/jobmanager.sh"), "start-foreground"])
            wait_for_port(self.ports["rest"], self.processes["jobmanager"], self._log("jobmanager"))
            for index in range(self.taskmanagers):
                self.start_taskmanager(index)
            self.wait_for_slots(self.taskmanagers * self.slots)
        except BaseException:
            self.stop()  # a half-started cluster must not outlive the error
            raise
        (self.work / "cluster.json").write_text(json.dumps(
            {"ports": self.ports, "pids": {name: process.pid for name, process in self.processes.items()},
             "parallelism": self.parallelism}, indent=1))
        LOG.info("Flink %s on %s: %d TaskManager(s) x %d slots; SDK worker pool on port %d",
                 FLINK_VERSION, self.rest_address, self.taskmanagers, self.slots, self.ports["pool"])
        return self

    def start_taskmanager(self, index: int) -> None:
        # A resource id per process, so the REST API's view of a TaskManager maps to the JVM to kill.
        self._start(f"taskmanager-{index}", [str(FLINK_HOME / "bin/taskmanager.sh"), "start-foreground",
                                             f"-Dtaskmanager.resource-id=taskmanager-{index}"])

    def busy_taskmanager(self) -> int:
        """The index of a TaskManager that holds a job's slots now."""
        with urllib.request.urlopen(f"http://{self.rest_address}/taskmanagers", timeout=10) as answer:
            busy = [manager["id"] for manager in json.load(answer)["taskmanagers"]
                    if manager["freeSlots"] < manager["slotsNumber"]]
        if not busy:
            raise RuntimeError("no TaskManager holds a slot")
        return int(sorted(busy)[0].rsplit("-", 1)[1])

    def kill_taskmanager(self, index: int) -> None:
        """kill -9: the TaskManager dies mid-task, as a lost machine does."""
        process = self.processes.pop(f"taskmanager-{index}")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def overview(self) -> dict:
        with urllib.request.urlopen(f"http://{self.rest_address}/overview", timeout=10) as answer:
            return json.load(answer)

    def jobs(self) -> list[dict]:
        with urllib.request.urlopen(f"http://{self.rest_address}/jobs/overview", timeout=10) as answer:
            return json.load(answer)["jobs"]

    def wait_for_slots(self, slots: int, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                if self.overview()["slots-total"] >= slots:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Flink: {slots} slots never registered; see {self.work / 'log'}")

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()

    def _log(self, name: str) -> Path:
        return self.work / "log" / f"{name}.out"

    def _start(self, name: str, argv: list[str]) -> None:
        env = dict(os.environ, FLINK_CONF_DIR=str(self.work / "conf"), FLINK_LOG_DIR=str(self.work / "log"),
                   FLINK_PID_DIR=str(self.work / "tmp"))
        self.processes[name] = subprocess.Popen(argv, stdout=self._log(name).open("w"), stderr=subprocess.STDOUT,
                                                env=env, start_new_session=True, cwd=self.work)

    def _start_worker_pool(self) -> None:
        self.processes["worker-pool"] = start_worker_pool(self.work / "workers", self.ports["pool"], self.python,
                                                          self._log("worker-pool"))


def start_worker_pool(folder: Path, port: int, python: str = sys.executable, log: Path | None = None
                      ) -> subprocess.Popen:
    """Beam's Python SDK worker pool (what ``--environment_type EXTERNAL`` asks for workers), on ``port``.

    Workers are started as ``python`` from PATH: this interpreter's folder goes first. They run in the
    empty ``folder``: nothing may depend on the launcher's working directory."""
    folder.mkdir(parents=True, exist_ok=True)
    log = log or folder / "worker-pool.out"
    env = dict(os.environ, PATH=os.path.dirname(python) + os.pathsep + os.environ.get("PATH", ""))
    pool = subprocess.Popen([python, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port",
                             str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=folder)
    wait_for_port(port, pool, log)
    return pool


def flink_options(flink_master: str, worker_pool: str, parallelism: int, artifacts_dir: Path) -> list[str]:
    """Beam options for a Flink session cluster, with SDK workers from an external worker pool.

    ``--artifacts_dir`` is a folder that outlives the launcher: with ``--detach`` the launcher (and
    the job server it started) exits while TaskManagers still read the staged artifacts."""
    return ["--runner", "FlinkRunner", "--flink_master", flink_master, "--flink_version", FLINK_MINOR,
            "--flink_job_server_jar", str(FLINK_JOB_SERVER.jar), "--artifacts_dir", str(artifacts_dir),
            "--environment_type", "EXTERNAL", "--environment_config", worker_pool,
            "--parallelism", str(parallelism)]


def spark_options(worker_pool: str | None = None, master: str = "local[2]") -> list[str]:
    """Beam options for Spark through its job server (``local[2]``: Spark inside the job server's JVM).

    SDK workers come from ``worker_pool`` (EXTERNAL), as the tests run them; without one they run inside
    the launcher (LOOPBACK), which is fine for a launcher that waits (Spark cannot be detached anyway)."""
    environment = (["--environment_type", "EXTERNAL", "--environment_config", worker_pool] if worker_pool
                   else ["--environment_type", "LOOPBACK"])
    return ["--runner", "SparkRunner", "--spark_master_url", master,
            "--spark_job_server_jar", str(SPARK_JOB_SERVER.jar), *environment]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[engines] %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch, check and cache the job servers and Flink (idempotent)")
    commands.add_parser("paths", help="print where the engines are, as JSON")
    flink = commands.add_parser("flink", help="a local Flink session cluster")
    flink.add_argument("action", choices=("start", "stop", "options"))
    flink.add_argument("work", type=Path, help="folder for its configuration, logs and state")
    flink.add_argument("--taskmanagers", type=int, default=1)
    flink.add_argument("--slots", type=int, default=2)
    spark = commands.add_parser("spark", help="Spark through Beam's job server")
    spark.add_argument("action", choices=("options",))
    spark.add_argument("--worker-pool", default=None, help="host:port of an SDK worker pool (EXTERNAL)")
    args = parser.parse_args(argv)

    if args.command == "fetch":
        print(json.dumps(fetch_all(), indent=1))
    elif args.command == "paths":
        print(json.dumps(paths(), indent=1))
    elif args.command == "spark":
        print(" ".join(spark_options(args.worker_pool)))
    elif args.action == "start":
        cluster = LocalFlinkCluster(args.work.resolve(), args.taskmanagers, args.slots,
                                    parallelism=args.taskmanagers * args.slots).start()
        print(" ".join(cluster.beam_options()))
    else:
        state = json.loads((args.work / "cluster.json").read_text())
        if args.action == "options":
            ports = state["ports"]
            print(" ".join(flink_options(f"127.0.0.1:{ports['rest']}", f"127.0.0.1:{ports['pool']}",
                                         state["parallelism"], args.work.resolve() / "artifacts")))
        else:
            for name, pid in state["pids"].items():
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    LOG.info("%s (pid %d) was not running", name, pid)
            (args.work / "cluster.json").unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
