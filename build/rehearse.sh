#!/usr/bin/env bash
# The ways from a checkout to SageMaker, rehearsed offline (`make rehearse`).
#
# It runs the real smtriton commands in the order a person runs them against
# AWS: package (an archive, and a repository uncompressed) and upload;
# deploy a real-time endpoint, invoke it, update it in place; a serverless
# endpoint; two inference components on one endpoint, one scaled to zero and
# woken by a request; an asynchronous endpoint called through S3; a batch
# transform job; delete each. AWS is the project's local stand-in
# (tests/build/fake_aws.py: moto served over HTTP, plus what moto lacks),
# which runs the image itself for each endpoint, component and job (`serve`
# on an /opt/ml laid out from its S3, as SageMaker starts the image) and
# passes each invocation to it. Nothing reaches AWS: the stand-in's address is
# in AWS_ENDPOINT_URL and the credentials are made up. The stand-in and the
# containers it started are stopped at the end, whatever happens; their logs
# are kept in $REHEARSAL_DIR (.work/rehearsal).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=.venv/bin/python
SMTRITON=.venv/bin/smtriton
WORK=${REHEARSAL_DIR:-.work/rehearsal}
ENDPOINT=rehearsal-ncf
COMPONENTS=rehearsal-components
ASYNC=rehearsal-async
SERVERLESS=rehearsal-serverless
BUCKET=rehearsal-models
IMAGE=123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-triton:rehearsal
ROLE=arn:aws:iam::123456789012:role/SageMakerExecution
BODY='{"inputs": [{"name": "user_id", "shape": [2, 1], "datatype": "INT64", "data": [42, 42]},
                  {"name": "item_id", "shape": [2, 1], "datatype": "INT64", "data": [7, 19]}]}'

step() { printf '\n== %s\n' "$*" >&2; }
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Polls URL until it answers 200, or fails naming LOG after SECONDS.
wait_for() {
    local url=$1 seconds=$2 log=$3 pid=$4
    for _ in $(seq $((seconds * 10))); do
        curl -fs -o /dev/null "$url" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "rehearse: exited early; see $log" >&2; tail -20 "$log" >&2; return 1; }
        sleep 0.1
    done
    echo "rehearse: $url did not answer within $seconds s; see $log" >&2
    tail -20 "$log" >&2
    return 1
}

rm -rf "$WORK"
mkdir -p "$WORK"
AWS_PID=
stop() {
    # The stand-in stops the containers it started (SIGTERM, as SageMaker does) before it exits.
    if [ -n "$AWS_PID" ]; then
        kill -TERM -- "-$AWS_PID" 2>/dev/null || true
        wait "$AWS_PID" 2>/dev/null || true
    fi
}
trap stop EXIT

step "the AWS stand-in"
AWS_PORT=$(free_port)
setsid "$PYTHON" tests/build/fake_aws.py --port "$AWS_PORT" --work "$PWD/$WORK" >"$WORK/aws.log" 2>&1 &
AWS_PID=$!
wait_for "http://127.0.0.1:$AWS_PORT/moto-api/" 30 "$WORK/aws.log" "$AWS_PID"
# Only the stand-in: no profile, credentials or region of this machine.
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_REGION AWS_SESSION_TOKEN
export AWS_ENDPOINT_URL=http://127.0.0.1:$AWS_PORT AWS_DEFAULT_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=rehearsal AWS_SECRET_ACCESS_KEY=rehearsal \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
# The bucket exists before a real run too (aws s3 mb s3://BUCKET).
"$PYTHON" -c "import boto3; boto3.client('s3').create_bucket(Bucket='$BUCKET')"
# The image in ECR, as `smtriton push` leaves it (the stand-in keeps its manifest only: 1.5
# GB, MODEL_LIBRARIES=false's size, so that serverless takes it).
"$PYTHON" - "$IMAGE" <<'PUSHED'
import json, sys, boto3
repository, tag = sys.argv[1].split("/", 1)[1].split(":")
ecr = boto3.client("ecr")
ecr.create_repository(repositoryName=repository)
layer = {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 1610612736, "digest": "sha256:" + "0" * 64}
ecr.put_image(repositoryName=repository, imageTag=tag, imageManifest=json.dumps(
    {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
     "config": {**layer, "mediaType": "application/vnd.docker.container.image.v1+json"},
     "layers": [layer]}))
PUSHED
# The image, as the stand-in runs it: `serve`, in an /opt/ml it lays out from its S3 for
# each endpoint, component and job (its log: $WORK/container-N/serve.log).
curl -fs -X POST "$AWS_ENDPOINT_URL/_fake/images" -H 'Content-Type: application/json' \
    -d "{\"image\": \"$IMAGE\", \"command\": [\"$PWD/.venv/bin/serve\"],
         \"env\": {\"SAGEMAKER_TRITON_LOG_VERBOSE\": \"false\"}}"

step "smtriton package (checked with the image's own checks) and upload"
MODEL_DATA=$("$SMTRITON" package model_repository/ncf_food model_repository/ncf_fashion \
    --default-model ncf_food --output "$WORK/model.tar.gz" --upload "s3://$BUCKET/ncf/")
echo "$MODEL_DATA"
step "smtriton package --uncompressed: the repository's files under a prefix, nothing to unpack"
FASHION_DATA=$("$SMTRITON" package model_repository/ncf_fashion \
    --output "$WORK/fashion.tar.gz" --uncompressed --upload "s3://$BUCKET/fashion/v1/")
echo "$FASHION_DATA"

step "smtriton deploy (the default instance type)"
"$SMTRITON" deploy --endpoint-name "$ENDPOINT" --image "$IMAGE" --role "$ROLE" \
    --model-data "$MODEL_DATA" --default-model ncf_food --poll-interval 0.2

step "smtriton invoke"
"$SMTRITON" invoke --endpoint-name "$ENDPOINT" --body "$BODY"
echo
"$SMTRITON" invoke --endpoint-name "$ENDPOINT" --content-type text/csv --body $'42,7\n42,19\n'

step "smtriton invoke with a bad record: the container's 400, as SageMaker relays it"
if "$SMTRITON" invoke --endpoint-name "$ENDPOINT" --content-type text/csv --body $'42,x\n'; then
    echo "rehearse: a record that is not a number was answered" >&2
    exit 1
fi

step "smtriton deploy again: an update in place to a larger instance"
"$SMTRITON" deploy --endpoint-name "$ENDPOINT" --image "$IMAGE" --role "$ROLE" \
    --model-data "$MODEL_DATA" --default-model ncf_food --instance-type ml.g5.2xlarge \
    --poll-interval 0.2
"$SMTRITON" invoke --endpoint-name "$ENDPOINT" --body "$BODY"
echo

step "a serverless endpoint: memory and concurrency, no instances; the image's size checked in ECR"
"$SMTRITON" deploy --endpoint-name "$SERVERLESS" --image "$IMAGE" --role "$ROLE" \
    --model-data "$MODEL_DATA" --default-model ncf_food --serverless 2048,5 --poll-interval 0.2
"$SMTRITON" invoke --endpoint-name "$SERVERLESS" --content-type text/csv --body $'42,7\n'
"$SMTRITON" delete --endpoint-name "$SERVERLESS" --wait --poll-interval 0.2

step "smtriton delete"
"$SMTRITON" delete --endpoint-name "$ENDPOINT" --wait --poll-interval 0.2

step "inference components: two models on one endpoint, the first scaling to zero, the second uncompressed"
"$SMTRITON" deploy --endpoint-name "$COMPONENTS" --inference-component ncf-food \
    --image "$IMAGE" --role "$ROLE" --model-data "$MODEL_DATA" --default-model ncf_food \
    --cpus 1 --memory 2048 --min-copies 0 --max-copies 2 --max-instances 2 --poll-interval 0.2
"$SMTRITON" deploy --endpoint-name "$COMPONENTS" --inference-component ncf-fashion \
    --image "$IMAGE" --role "$ROLE" --model-data "$FASHION_DATA" \
    --cpus 1 --memory 2048 --poll-interval 0.2
"$SMTRITON" invoke --endpoint-name "$COMPONENTS" --inference-component ncf-food \
    --content-type text/csv --body $'42,7\n'
"$SMTRITON" invoke --endpoint-name "$COMPONENTS" --inference-component ncf-fashion \
    --content-type text/csv --body $'42,7\n'

step "idle: auto scaling takes ncf-food to zero copies; the next request wakes it"
# Done here as target tracking's scale-in does after an idle spell.
"$PYTHON" -c "import boto3; boto3.client('sagemaker').update_inference_component_runtime_config(
    InferenceComponentName='ncf-food', DesiredRuntimeConfig={'CopyCount': 0})"
"$SMTRITON" invoke --endpoint-name "$COMPONENTS" --inference-component ncf-food \
    --content-type text/csv --body $'42,7\n' --wait-for-capacity 120

step "smtriton delete: the components, then the endpoint"
"$SMTRITON" delete --endpoint-name "$COMPONENTS" --wait --poll-interval 0.2

step "an asynchronous endpoint: the request through S3, the answer from S3"
"$SMTRITON" deploy --endpoint-name "$ASYNC" --image "$IMAGE" --role "$ROLE" \
    --model-data "$MODEL_DATA" --default-model ncf_food \
    --async-output "s3://$BUCKET/async/answers/" --async-max-concurrency 2 --poll-interval 0.2
"$SMTRITON" invoke --endpoint-name "$ASYNC" --async --content-type text/csv \
    --body $'42,7\n42,19\n' --poll-interval 0.2
"$SMTRITON" delete --endpoint-name "$ASYNC" --wait --poll-interval 0.2

step "a batch transform job: every line of the input answered, in order"
"$PYTHON" -c "import boto3; boto3.client('s3').put_object(Bucket='$BUCKET',
    Key='batch/in/users.csv', Body=b'42,7\n42,19\n7,7\n')"
"$SMTRITON" transform --image "$IMAGE" --role "$ROLE" --model-data "$MODEL_DATA" \
    --default-model ncf_food --input "s3://$BUCKET/batch/in/" --output "s3://$BUCKET/batch/out/" \
    --content-type text/csv --accept text/csv --poll-interval 0.2
"$PYTHON" -c "import boto3; print(boto3.client('s3').get_object(Bucket='$BUCKET',
    Key='batch/out/users.csv.out')['Body'].read().decode(), end='')"

step "rehearsal done"
