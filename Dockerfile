# The service's image: one image, one process per container (api, scheduler, dispatcher, journeys, migrate).
# Build: docker build -t crm-retention .   Run them all: docker compose -f deploy/compose.yaml up

# ---- build: the locked dependencies into a virtualenv (compilers and caches stay in this stage)
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.lock
COPY . /app
RUN /opt/venv/bin/pip install --no-deps -e /app

# ---- run: the virtualenv and the code, as an unprivileged user
FROM python:3.11-slim-bookworm AS run
RUN groupadd --system --gid 10001 crm && useradd --system --uid 10001 --gid crm --home-dir /var/lib/crm crm \
    && mkdir -p /var/lib/crm/metrics && chown -R crm:crm /var/lib/crm
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 CRM_DATA_DIR=/var/lib/crm CRM_API_PORT=8000
WORKDIR /app
USER crm
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["crm", "health", "api"]
ENTRYPOINT ["crm"]
CMD ["serve", "--host", "0.0.0.0"]
