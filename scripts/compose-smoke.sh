#!/usr/bin/env bash
# Really runs the compose stack (docker-compose.yml + docker-compose.smoke.yml, CPU variant) on
# a Debian machine without a registry, and tears it all down again:
#   1. installs Debian's docker.io, docker-compose and debootstrap (apt-get, as root);
#   2. starts a private dockerd (--bridge=none, no iptables; own socket, data and exec roots;
#      overlay2, else vfs) in the background and records its PID;
#   3. debootstraps a minimal Debian (python3 + venv) from the mirror in this machine's apt
#      sources (none there: it fails) and
#      `docker import`s it as the base image (TensorFlow's image cannot be pulled);
#   4. builds Debian's redis-server as the redis image and the tfgate image through compose;
#   5. brings up redis, the demo-model init step and tfgate-cpu on the host network
#      (127.0.0.1), sends a REST and a gRPC predict (the official Python client from .venv);
#   6. runs the image the way TF Serving's is run (MODEL_NAME, extra flags), sends a REST and a
#      gRPC predict, and stops it with SIGTERM (exit status 0 expected);
#   7. compose down -v, removes the images it built, stops its dockerd by PID, deletes its
#      work directory (TFGATE_SMOKE_KEEP=1 keeps the work directory for a look).
# Usage (as root): scripts/compose-smoke.sh    Output: docs/deploy.md, "Compose smoke run".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORK=${TFGATE_SMOKE_WORK:-/var/tmp/tfgate-compose-smoke}
export TFGATE_SMOKE_REST_PORT=${TFGATE_SMOKE_REST_PORT:-18501}
export TFGATE_SMOKE_GRPC_PORT=${TFGATE_SMOKE_GRPC_PORT:-18500}
export TFGATE_SMOKE_REDIS_PORT=${TFGATE_SMOKE_REDIS_PORT:-16379}
TFS_REST_PORT=${TFGATE_SMOKE_TFS_REST_PORT:-28501}
TFS_GRPC_PORT=${TFGATE_SMOKE_TFS_GRPC_PORT:-28500}
export TFGATE_SMOKE_BASE_IMAGE=tfgate-base:bookworm
export TFGATE_SMOKE_IMAGE=tfgate-smoke:cpu
export TFGATE_SMOKE_REDIS_IMAGE=tfgate-smoke-redis:7
export COMPOSE_PROJECT_NAME=tfgate-smoke
TFS_CONTAINER=tfgate-smoke-tfs
DOCKER=/usr/bin/docker   # Debian's client, matching its dockerd (not another one on PATH)
PY="$ROOT/.venv/bin/python"

log() { printf '[smoke %4ds] %s\n' "$SECONDS" "$*"; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || { echo "compose-smoke: run as root (apt-get, dockerd)" >&2; exit 2; }
for port in "$TFGATE_SMOKE_REST_PORT" "$TFGATE_SMOKE_GRPC_PORT" "$TFGATE_SMOKE_REDIS_PORT" \
  "$TFS_REST_PORT" "$TFS_GRPC_PORT"; do
  python3 -c "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" \
    "$port" 2>/dev/null || die "port $port on 127.0.0.1 is in use (set TFGATE_SMOKE_*_PORT)"
done
[ ! -e "$WORK" ] || die "$WORK exists (a previous run's? remove it first)"

# --- 1. packages -------------------------------------------------------------------------
need=()
[ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ] || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if ! command -v docker-compose >/dev/null 2>&1 && ! "$DOCKER" compose version >/dev/null 2>&1; then
  need+=(compose)
fi
if [ "${#need[@]}" -gt 0 ]; then
  log "apt-get install: ${need[*]}"
  apt-get update -qq
  for i in "${!need[@]}"; do
    if [ "${need[$i]}" = compose ]; then
      # Debian ships Compose v2 as docker-compose-plugin in some releases, v1 as docker-compose.
      if apt-cache show docker-compose-plugin >/dev/null 2>&1; then
        need[i]=docker-compose-plugin
      else
        need[i]=docker-compose
      fi
    fi
  done
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null
fi
[ -x "$PY" ] || scripts/setup.sh
if "$DOCKER" compose version >/dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
else
  COMPOSE=(docker-compose)
fi
log "engine: $(/usr/sbin/dockerd --version); compose: $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -1)"

# --- 2. a private dockerd ----------------------------------------------------------------
mkdir -p "$WORK/docker-config"
export DOCKER_HOST="unix://$WORK/docker.sock"
export DOCKER_CONFIG="$WORK/docker-config"   # empty: no credentials, no helpers
DOCKERD_PID=""
CREATED_IMAGES=()

compose() {  # the rendered stack (step 4)
  "${COMPOSE[@]}" --project-directory "$ROOT" -f "$WORK/docker-compose.rendered.yml" "$@"
}

stop_dockerd() {
  [ -n "$DOCKERD_PID" ] || return 0
  kill -TERM "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 60); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL "$DOCKERD_PID" 2>/dev/null || true
  wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
}

cleanup() {
  local status=$?
  set +e
  if [ -n "$DOCKERD_PID" ]; then
    if [ "$status" -ne 0 ]; then
      log "--- container logs (last 40 lines each) ---"
      compose logs --no-color --tail=40 2>&1 | tail -n 160
      "$DOCKER" logs --tail=40 "$TFS_CONTAINER" 2>&1 | tail -n 40
    fi
    log "teardown: compose down -v, remove the images built here, stop dockerd ($DOCKERD_PID)"
    compose down -v --remove-orphans >/dev/null 2>&1
    "$DOCKER" rm -f "$TFS_CONTAINER" >/dev/null 2>&1
    for image in "${CREATED_IMAGES[@]}"; do
      "$DOCKER" rmi -f "$image" >/dev/null 2>&1
    done
    stop_dockerd
  fi
  # Mounts dockerd or debootstrap may leave behind (netns files, overlays, the rootfs's /proc).
  grep -F " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  if [ "${TFGATE_SMOKE_KEEP:-0}" = 1 ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  if [ "$status" -eq 0 ]; then
    log "PASSED in ${SECONDS}s"
  else
    log "FAILED (exit $status) after ${SECONDS}s"
  fi
  exit "$status"
}
trap cleanup EXIT

start_dockerd() {  # $1: storage driver
  /usr/sbin/dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    --storage-driver="$1" --data-root="$WORK/data" --exec-root="$WORK/exec" \
    --pidfile="$WORK/dockerd.pid" --host="$DOCKER_HOST" >>"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  log "dockerd with $1 did not come up; its log ends:"
  tail -n 15 "$WORK/dockerd.log"
  stop_dockerd
  return 1
}
start_dockerd overlay2 || start_dockerd vfs || die "dockerd does not run here (log above)"
log "dockerd pid $DOCKERD_PID, storage driver $("$DOCKER" info --format '{{.Driver}}'), bridge none"

# --- 3. base image: debootstrap + docker import ------------------------------------------
# The Debian mirror is the one this machine's apt uses, read from its own sources by
# scripts/apt_mirror.py; no mirror is built in, so a machine without one fails here.
mirror=$(python3 scripts/apt_mirror.py bookworm) || die "debootstrap needs a Debian mirror"
log "debootstrap bookworm (minbase + python3, python3-venv) from the mirror in the apt sources"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap"; }
rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
# The host's local CAs (a TLS-intercepting proxy's, say): pip in the image build has to trust
# what the host trusts.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
  chroot "$WORK/rootfs" update-ca-certificates >/dev/null 2>&1
  log "added the host's local CA certificates: $(cd /usr/local/share/ca-certificates && echo *.crt)"
fi
bundle=/etc/ssl/certs/ca-certificates.crt
tar -C "$WORK/rootfs" -c . | "$DOCKER" import --change 'ENV LANG=C.UTF-8' \
  --change "ENV PIP_CERT=$bundle" --change "ENV SSL_CERT_FILE=$bundle" \
  - "$TFGATE_SMOKE_BASE_IMAGE" >/dev/null
CREATED_IMAGES+=("$TFGATE_SMOKE_BASE_IMAGE")
rm -rf "$WORK/rootfs"
log "imported $TFGATE_SMOKE_BASE_IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$TFGATE_SMOKE_BASE_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"

# --- 4. the stack's configuration and images ----------------------------------------------
# Compose v1 (docker-py) refuses published ports on the host network ("host" network_mode is
# incompatible with port_bindings), and an override file can add ports but not remove them:
# render the merged configuration with `compose config` and leave the ports out.
log "compose config: docker-compose.yml + docker-compose.smoke.yml, without published ports"
"${COMPOSE[@]}" -f docker-compose.yml -f docker-compose.smoke.yml config >"$WORK/merged.yml"
"$PY" - "$WORK/merged.yml" "$WORK/docker-compose.rendered.yml" <<'EOF'
import sys

import yaml

with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
for service in config["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
EOF
log "build $TFGATE_SMOKE_REDIS_IMAGE (Debian's redis-server)"
CREATED_IMAGES+=("$TFGATE_SMOKE_REDIS_IMAGE")
"$DOCKER" build -q --network host -t "$TFGATE_SMOKE_REDIS_IMAGE" - >/dev/null <<EOF
FROM $TFGATE_SMOKE_BASE_IMAGE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null && rm -rf /var/lib/apt/lists/*
USER redis
CMD ["redis-server"]
EOF
log "build $TFGATE_SMOKE_IMAGE from Dockerfile.gpu (BASE_IMAGE=$TFGATE_SMOKE_BASE_IMAGE)"
CREATED_IMAGES+=("$TFGATE_SMOKE_IMAGE")
compose build tfgate-cpu >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; die "build"; }
grep -E "^Step [0-9]+/[0-9]+ : |Successfully (built|tagged)|TensorFlow ModelServer: |tfgate: [0-9]+ modules import" \
  "$WORK/build.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /' | cut -c1-150
log "image size $("$DOCKER" image inspect -f '{{.Size}}' "$TFGATE_SMOKE_IMAGE" | awk '{printf "%d MB", $1/1e6}')"

# --- 5. the compose stack ------------------------------------------------------------------
log "compose up -d tfgate-cpu (+ redis, demo-model-cpu)"
compose up -d --no-build tfgate-cpu 2>&1 | sed 's/^/    /'
cid=$(compose ps -q tfgate-cpu)
[ -n "$cid" ] || die "no tfgate-cpu container"
health=""
for _ in $(seq 200); do
  health=$("$DOCKER" inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid")
  case "$health" in
    running/healthy) break ;;
    exited/*|dead/*) die "tfgate-cpu stopped: $health" ;;
  esac
  sleep 1.5
done
[ "$health" = running/healthy ] || die "tfgate-cpu not healthy in time: $health"
log "tfgate-cpu is $health (docker HEALTHCHECK on /readyz)"
COLUMNS=120 compose ps 2>&1 | sed 's/^/    /'
"$DOCKER" logs "$cid" 2>&1 | grep -m1 "gRPC served by" | cut -c1-160 | sed 's/^/    /' || true

log "REST and gRPC predictions against the compose stack"
# (TensorFlow's start-up chatter on stderr filtered out; errors still show)
TF_CPP_MIN_LOG_LEVEL=3 "$PY" - "$TFGATE_SMOKE_REST_PORT" "$TFGATE_SMOKE_GRPC_PORT" \
  2> >(grep -v -E 'absl::InitializeLog|cudart_stub|cpu_feature_guard|rebuild TensorFlow|oneDNN' >&2) <<'EOF'
import json
import sys
import urllib.request

rest_port, grpc_port = int(sys.argv[1]), int(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def rest(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    with opener.open(f"http://127.0.0.1:{rest_port}{path}", data=data, timeout=30) as response:
        return response.status, response.read().decode()


print("    GET /readyz ->", *rest("/readyz"))
for attempt in ("miss", "hit"):
    status, body = rest("/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
    print(f"    REST predict ({attempt}) ->", status, json.dumps(json.loads(body)))
    assert json.loads(body) == {"predictions": [2.5, 3.0, 4.5]}, body

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0], [5.0]], dtype=tf.float32))
    response = stub.Predict(request, timeout=30)
    y = tf.make_ndarray(response.outputs["y"]).ravel().tolist()
    print("    gRPC Predict ->", f"model_spec {response.model_spec.name} v{response.model_spec.version.value},", "y =", y)
    assert y == [2.5, 3.0, 4.5], y

status, metrics = rest("/metrics")
counts = [line for line in metrics.splitlines() if line.startswith(":tensorflow:serving:request_count")]
print("    GET /metrics ->", status, "|", *counts[:4])
EOF
redis_cid=$(compose ps -q redis)
keys=$("$DOCKER" exec "$redis_cid" redis-cli -p "$TFGATE_SMOKE_REDIS_PORT" dbsize)
log "redis holds $keys cache entries (the compose config caches half_plus_two)"
[ "$keys" -gt 0 ] || die "nothing was cached in redis"

# --- 6. the image run as TF Serving's is ---------------------------------------------------
models_volume="${COMPOSE_PROJECT_NAME}_models"
log "docker run $TFGATE_SMOKE_IMAGE like tensorflow/serving: MODEL_NAME=half_plus_two, extra flags"
"$DOCKER" run -d --name "$TFS_CONTAINER" --network host --init --shm-size 512m \
  -v "$models_volume:/models:ro" -e MODEL_NAME=half_plus_two \
  -e TFGATE_HEALTHCHECK_URL="http://127.0.0.1:$TFS_REST_PORT/readyz" "$TFGATE_SMOKE_IMAGE" \
  --port="$TFS_GRPC_PORT" --rest_api_port="$TFS_REST_PORT" \
  --grpc_host=127.0.0.1 --rest_api_host=127.0.0.1 >/dev/null
TF_CPP_MIN_LOG_LEVEL=3 "$PY" - "$TFS_REST_PORT" "$TFS_GRPC_PORT" \
  2> >(grep -v -E 'absl::InitializeLog|cudart_stub|cpu_feature_guard|rebuild TensorFlow|oneDNN' >&2) <<'EOF'
import json
import sys
import time
import urllib.error
import urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + 240
while True:
    try:
        with opener.open(base + "/readyz", timeout=5) as response:
            if response.status == 200:
                break
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        pass
    if time.monotonic() > deadline:
        raise SystemExit("not ready in 240 s")
    time.sleep(1)
body = json.dumps({"instances": [3.0]}).encode()
with opener.open(base + "/v1/models/half_plus_two:predict", data=body, timeout=30) as response:
    result = json.loads(response.read())
print("    REST predict ->", response.status, json.dumps(result))
assert result == {"predictions": [3.5]}, result

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

with grpc.insecure_channel(f"127.0.0.1:{sys.argv[2]}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[3.0], [7.0]], dtype=tf.float32))
    reply = stub.Predict(request, timeout=30)
    y = tf.make_ndarray(reply.outputs["y"]).ravel().tolist()
    print("    gRPC Predict ->", f"model_spec {reply.model_spec.name} v{reply.model_spec.version.value},", "y =", y)
    assert y == [3.5, 5.5], y
EOF
# What the entrypoint ran (the image has no procps: read /proc).
# shellcheck disable=SC2016
"$DOCKER" exec "$TFS_CONTAINER" sh -c \
  'for p in /proc/[0-9]*; do tr "\0" " " <"$p/cmdline"; echo; done 2>/dev/null' \
  | grep -m1 "tensorflow_model_server --" | cut -c1-300 | sed 's/^/    process: /' || true
"$DOCKER" stop -t 40 "$TFS_CONTAINER" >/dev/null
exit_code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$TFS_CONTAINER")
log "docker stop (SIGTERM) -> exit status $exit_code"
"$DOCKER" logs "$TFS_CONTAINER" 2>&1 | grep -iE "drain|shut|stopp|exit" | tail -n 4 | cut -c1-160 | sed 's/^/    /'
[ "$exit_code" = 0 ] || die "the server exited with $exit_code on SIGTERM"
