#!/bin/sh
# The part of the official image's entrypoint the stack relies on: the first start initialises $PGDATA
# with POSTGRES_USER and POSTGRES_PASSWORD (password login from other hosts), creates POSTGRES_DB and runs
# /docker-entrypoint-initdb.d/*.sql and *.sh once, on a server reachable only through its local socket;
# then `postgres` serves every interface.
set -eu
if [ "${1:-}" = postgres ]; then
  shift
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (the superuser password for logins from other containers)}"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    [ "$db" = postgres ] || psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -c "CREATE DATABASE \"$db\""
    for f in /docker-entrypoint-initdb.d/*; do
      case "$f" in
        *.sql) psql -v ON_ERROR_STOP=1 --username="$user" --dbname="$db" -f "$f" ;;
        *.sh) . "$f" ;;
      esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL init process complete; ready for start up."
  fi
  exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
