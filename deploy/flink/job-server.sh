#!/usr/bin/env bash
# A long-lived Beam Flink job server next to a Flink 1.19 cluster, for launchers that cannot reach the
# JobManager themselves or should not run a JVM. Then submit with
#   --runner=PortableRunner --job_endpoint=JOB_SERVER_HOST:8099 --artifacts_dir=... --environment_type=EXTERNAL ...
# instead of --runner=FlinkRunner. Uses the jar `python scripts/engines.py fetch` assembled (Java 17).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
FLINK_MASTER=${FLINK_MASTER:?set FLINK_MASTER=host:8081}
ARTIFACTS_DIR=${ARTIFACTS_DIR:?set ARTIFACTS_DIR to a folder every TaskManager can read}
JAR=${JAR:-.engines/flink-1.19-job-server/beam-flink-1.19-job-server-2.62.0.jar}
exec java -jar "$JAR" --flink-master="$FLINK_MASTER" --artifacts-dir="$ARTIFACTS_DIR" \
  --job-port=8099 --artifact-port=8098 --expansion-port=-1
