#!/bin/sh
# The official Redis image's entrypoint contract, for Debian's redis-server:
# - only flags (or a config file) as the command run redis-server with them;
# - started as root, the entrypoint gives /data to redis and runs the server as redis;
# - without a config file that sets it, protected mode is off (the server is reached over the
#   container network, never on the host's loopback); flags given later still override it.
set -eu

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

# Files the server creates (append-only file, snapshots) are for its user only.
if [ "$(umask)" = 0022 ]; then
    umask 0077
fi

if [ "$1" = redis-server ]; then
    config_file=
    protected_mode_default=yes
    if [ "$#" -ge 2 ] && [ -f "$2" ]; then
        config_file="$2"
        if grep -q '^protected-mode' "$config_file"; then
            protected_mode_default=
        fi
    fi
    if [ -n "$protected_mode_default" ]; then
        shift
        if [ -n "$config_file" ]; then
            shift
            set -- "$config_file" --protected-mode no "$@"
        else
            set -- --protected-mode no "$@"
        fi
        set -- redis-server "$@"
    fi
fi

exec "$@"
