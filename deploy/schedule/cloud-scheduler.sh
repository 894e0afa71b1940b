#!/usr/bin/env bash
# Launch the dpbeam Flex Template every night with Cloud Scheduler (no Airflow needed).
# Build and stage the template once:
#   gcloud dataflow flex-template build gs://BUCKET/templates/dpbeam.json \
#     --image REGION-docker.pkg.dev/PROJECT/dpbeam/launcher:0.1.0 --sdk-language PYTHON \
#     --metadata-file deploy/dataflow/flex-template-metadata.json
# Then schedule `profile` (schedule `prepare` an hour earlier the same way). Re-launches only process
# what is not committed yet, so a failed night is retried by the next one.
set -euo pipefail
PROJECT=${PROJECT:?} REGION=${REGION:?} BUCKET=${BUCKET:?} SERVICE_ACCOUNT=${SERVICE_ACCOUNT:?}
CPU_IMAGE="$REGION-docker.pkg.dev/$PROJECT/dpbeam/worker:0.1.0"
GPU_IMAGE="$REGION-docker.pkg.dev/$PROJECT/dpbeam/worker-gpu:0.1.0"
ACCELERATOR="type:nvidia-tesla-t4;count:1;install-nvidia-driver"
for COMMAND in prepare profile; do
  if [ "$COMMAND" = prepare ]; then
    HOUR=1 IMAGE=$CPU_IMAGE EXTRA=""
  else  # inference on a GPU: the GPU image and the accelerator hint on the inference step
    HOUR=3 IMAGE=$GPU_IMAGE EXTRA=", \"inference_accelerator\": \"$ACCELERATOR\""
  fi
  gcloud scheduler jobs create http "dpbeam-$COMMAND" --location "$REGION" --schedule "0 $HOUR * * *" \
    --uri "https://dataflow.googleapis.com/v1b3/projects/$PROJECT/locations/$REGION/flexTemplates:launch" \
    --http-method POST --oauth-service-account-email "$SERVICE_ACCOUNT" \
    --message-body "{\"launchParameter\": {\"jobName\": \"dpbeam-$COMMAND\",
      \"containerSpecGcsPath\": \"gs://$BUCKET/templates/dpbeam.json\",
      \"parameters\": {\"command\": \"$COMMAND\", \"root\": \"gs://$BUCKET/project\", \"config\": \"screen.json\"$EXTRA},
      \"environment\": {\"sdkContainerImage\": \"$IMAGE\"}}}"
done
