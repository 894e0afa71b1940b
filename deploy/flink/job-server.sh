#!/usr/bin/env bash
# Start a standalone Beam Flink job server next to a Flink cluster, for setups where the
# submitting machine cannot reach the JobManager directly. Then use
#   --runner=PortableRunner --job_endpoint=JOB_SERVER_HOST:8099 --environment_type=DOCKER ...
# instead of --runner=FlinkRunner. Needs Docker and network access to the Flink master.
set -euo pipefail
FLINK_MASTER=${FLINK_MASTER:?set FLINK_MASTER=host:8081}
FLINK_VERSION=${FLINK_VERSION:-1.19}
BEAM_VERSION=${BEAM_VERSION:-2.77.0}
exec docker run --rm --network=host "apache/beam_flink${FLINK_VERSION}_job_server:${BEAM_VERSION}" \
  --flink-master="$FLINK_MASTER" --job-port=8099 --artifact-port=8098 --expansion-port=8097
