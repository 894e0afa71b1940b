"""scripts/engines.py without the engines: the launcher jar's manifest, the cache rules, the pins."""

from __future__ import annotations

import re
import zipfile

from scripts import engines


def _headers(manifest: bytes) -> dict[str, str]:
    """Parse a manifest as the JAR spec says: lines of at most 72 bytes, a leading space continues one."""
    lines = manifest.decode().split("\r\n")
    assert all(len(line.encode()) <= 72 for line in lines)
    joined: list[str] = []
    for line in lines:
        if line.startswith(" "):
            joined[-1] += line[1:]
        elif line:
            joined.append(line)
    return dict(line.split(": ", 1) for line in joined)


def test_launcher_jar_names_every_library_and_the_entry_point(tmp_path):
    libraries = [f"lib/beam-runners-flink-1.19-2.62.0-part-{i:03d}-with-a-long-name.jar" for i in range(200)]
    jar = tmp_path / "launcher.jar"
    engines.write_launcher_jar(jar, engines.SPARK_JOB_SERVER.main_class, libraries, engines.SPARK_ADD_OPENS)
    with zipfile.ZipFile(jar) as archive:
        assert archive.namelist() == ["META-INF/MANIFEST.MF"]
        headers = _headers(archive.read("META-INF/MANIFEST.MF"))
    assert headers["Main-Class"] == "org.apache.beam.runners.spark.SparkJobServerDriver"
    assert headers["Class-Path"].split(" ") == libraries
    assert "java.base/sun.nio.ch" in headers["Add-Opens"].split(" ")


def test_a_cached_engine_is_reused_only_if_built_from_the_same_spec(tmp_path):
    spec = tmp_path / "spec.xml"
    spec.write_text("<project>one</project>")
    staging, folder = tmp_path / ".staging", tmp_path / "engine"
    staging.mkdir()
    assert not engines._is_current(folder, spec)
    engines._publish(staging, folder, spec)
    assert engines._is_current(folder, spec) and not staging.exists()
    spec.write_text("<project>two</project>")
    assert not engines._is_current(folder, spec)


def test_pins_agree_across_the_files():
    flink_pom = engines.FLINK_JOB_SERVER.pom.read_text()
    spark_pom = engines.SPARK_JOB_SERVER.pom.read_text()
    assert f"<artifactId>beam-runners-flink-{engines.FLINK_MINOR}</artifactId>" in flink_pom
    assert f"<version>{engines.BEAM_JAVA_VERSION}</version>" in flink_pom
    assert f"<version>{engines.BEAM_JAVA_VERSION}</version>" in spark_pom
    assert spark_pom.count(f"<version>{engines.SPARK_VERSION}</version>") == 2
    pins = dict(re.findall(r"^(apache-flink(?:-libraries)?)==(\S+) --hash=sha256:[0-9a-f]{64}$",
                           engines.FLINK_DISTRIBUTION_SPEC.read_text(), re.M))
    assert pins == {"apache-flink": engines.FLINK_VERSION, "apache-flink-libraries": engines.FLINK_VERSION}
    assert engines.FLINK_VERSION.startswith(engines.FLINK_MINOR + ".")
    for pom in (flink_pom, spark_pom):  # XML forbids "--" inside comments; Maven refuses the file
        assert all("--" not in comment for comment in re.findall(r"<!--(.*?)-->", pom, re.S))
