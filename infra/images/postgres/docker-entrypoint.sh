#!/usr/bin/env bash
# The official PostgreSQL image's entrypoint contract, for Debian's PostgreSQL:
#   POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE  the superuser's password (required)
#   POSTGRES_USER                                the superuser (default postgres)
#   POSTGRES_DB                                  a database created with it (default: the user's name)
#   POSTGRES_INITDB_ARGS                         more initdb arguments
# On the first start (empty PGDATA) it runs initdb, creates the database, runs
# /docker-entrypoint-initdb.d/*.sql and *.sh, and lets network clients in with
# scram-sha-256; later starts run the server on the existing data. Started as root, it reads
# the secrets, gives PGDATA to postgres and runs everything else as postgres.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

# VAR from the environment, or from the file named by VAR_FILE (never both).
file_env() {
    local var="$1" default="${2:-}"
    local file_var="${var}_FILE"
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        log "both $var and $file_var are set; set only one"
        exit 1
    fi
    local value="$default"
    if [ -n "${!var:-}" ]; then
        value="${!var}"
    elif [ -n "${!file_var:-}" ]; then
        value="$(< "${!file_var}")"
    fi
    export "$var"="$value"
    unset "$file_var"
}

if [ "${1:0:1}" = - ]; then
    set -- postgres "$@"
fi

if [ "$1" != postgres ]; then
    exec "$@"
fi

file_env POSTGRES_PASSWORD
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
export POSTGRES_INITDB_ARGS="${POSTGRES_INITDB_ARGS:-}"

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi
# Started as postgres (compose's `user: postgres`): initdb wants the folder for itself alone.
chmod 0700 "$PGDATA" 2>/dev/null || :
# The socket's folder, should /run be an empty tmpfs (a read-only root filesystem's).
mkdir -p /var/run/postgresql 2>/dev/null || :

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "$POSTGRES_PASSWORD" ]; then
        log "the database is uninitialised and no superuser password is set:" \
            "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
        exit 1
    fi
    log "initialising $PGDATA for $POSTGRES_USER"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments by contract.
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 $POSTGRES_INITDB_ARGS >&2
    printf '\n# Every network client, with a password (written by the image entrypoint).\nhost all all all scram-sha-256\n' \
        >> "$PGDATA/pg_hba.conf"

    # A server on the Unix socket only, so nothing connects before set-up has finished.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >&2
    psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";' >&2
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh)
                log "running $script"
                # shellcheck disable=SC1090 # the scripts are the deployment's own
                . "$script"
                ;;
            *.sql)
                log "running $script"
                "${psql[@]}" --dbname "$POSTGRES_DB" -f "$script" >&2
                ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >&2
    log "initialised; starting the server"
fi

unset POSTGRES_PASSWORD
exec "$@"
