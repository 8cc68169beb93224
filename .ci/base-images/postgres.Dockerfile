# Stand-in for postgres:15-bookworm: Debian 12's PostgreSQL 15 with an entrypoint that honours what
# the stack relies on (POSTGRES_USER/PASSWORD/DB, /docker-entrypoint-initdb.d, pg_isready).
FROM ghm-ci/debian:bookworm-minbase
ENV LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:$PATH
# No default cluster: the entrypoint initialises $PGDATA on the first start, as the official image does.
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install --yes --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p "$PGDATA" /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown postgres:postgres "$PGDATA" /var/run/postgresql && chmod 700 "$PGDATA"
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
USER postgres
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
