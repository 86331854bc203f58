# poolwatch daemon image.
#   docker build -t poolwatch .
#   docker run -p 18187:18187 -e DATABASE_URL=postgresql+psycopg2://... poolwatch
# Two stages: the build stage installs poolwatch into a virtual environment, the runtime stage
# copies only that environment (no compiler, no pip cache, no source tree).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/poolwatch
COPY pyproject.toml README.md ./
COPY poolwatch ./poolwatch
# Every runtime dependency ships manylinux wheels (psycopg2-binary, bcrypt, PyYAML): no
# build tools are needed, so none are installed.
RUN /opt/poolwatch/bin/pip install --no-cache-dir '.[daemon]' \
    && /opt/poolwatch/bin/poolwatch config --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="poolwatch" \
      org.opencontainers.image.description="Connection-pool health monitoring for SQLAlchemy and Redis, for Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
ARG UID=10001
RUN groupadd --system --gid ${UID} poolwatch \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /var/lib/poolwatch --create-home \
       --shell /usr/sbin/nologin poolwatch
COPY --from=build /opt/poolwatch /opt/poolwatch
# Inside a container the endpoint must listen on every interface (the default is 127.0.0.1);
# POOLWATCH_STATE_DIR is where the embedded SQLite default lives when nothing is configured.
ENV PATH=/opt/poolwatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POOLWATCH_LISTEN=0.0.0.0:18187 \
    POOLWATCH_STATE_DIR=/var/lib/poolwatch
USER 10001:10001
WORKDIR /var/lib/poolwatch
EXPOSE 18187
# Slim images have no curl: ask /healthz with the interpreter that is there anyway.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:18187/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["poolwatch"]
CMD ["run"]
