# runstore server image.
#
#   docker build -t runstore .
#   docker run -d -p 8000:8000 -v runstore-data:/data -e RUNSTORE_TOKENS=... runstore
#
# BASE_IMAGE must provide python3 (3.11 or newer) with the venv module and pip; every stage
# starts from it, so a stand-in (scripts/container-test builds one from Debian) can replace it.
ARG BASE_IMAGE=python:3.12-slim
# Extras of the runstore package to install: the server, and the PostgreSQL backend so that one
# image serves either store (RUNSTORE_DATABASE_URL picks PostgreSQL).
ARG RUNSTORE_EXTRAS=server,postgres

# --- build: wheels of runstore and of everything its extras need --------------------------------
FROM ${BASE_IMAGE} AS build

# Package index settings for this stage only (a mirror, a proxy's CA bundle); the runtime stage
# installs from the wheels built here, so none of them reaches the final image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG RUNSTORE_EXTRAS
# Builders that cache a RUN without looking into what it mounts from another stage (buildah's
# --layers) would install the wheels of an earlier build in the runtime stage, and cannot mount a
# stage they took whole from the cache. A digest of the sources, declared in both stages, makes
# both steps' cache keys change together with them. BuildKit needs no such help.
ARG RUNSTORE_SOURCE_DIGEST=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY client ./client
RUN python3 -m venv /opt/build \
 && /opt/build/bin/python -m pip wheel --wheel-dir /wheels ".[${RUNSTORE_EXTRAS}]"

# --- runtime: a virtual environment installed from those wheels, no compilers, no pip cache ------
FROM ${BASE_IMAGE} AS runtime
ARG RUNSTORE_EXTRAS
# See the build stage: the install step's cache key changes with the sources.
ARG RUNSTORE_SOURCE_DIGEST=

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The wheels are mounted, not copied: no layer keeps them. pip and setuptools leave the virtual
# environment once it is installed (the server needs neither). A fixed uid/gid, so that a volume
# or a bind mount can be given the right owner from outside.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/runstore \
 && /opt/runstore/bin/python -m pip install --no-index --no-cache-dir --no-compile \
        --disable-pip-version-check --find-links=/wheels "runstore[${RUNSTORE_EXTRAS}]" \
 && /opt/runstore/bin/python -m pip uninstall --yes --disable-pip-version-check setuptools pip \
 && find /opt/runstore -depth -name __pycache__ -type d -exec rm -rf {} + \
 && groupadd --system --gid 10001 runstore \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin runstore \
 && mkdir /data \
 && chown 10001:10001 /data \
 && chmod 0750 /data

# The server listens on every interface inside the container; with RUNSTORE_TOKENS unset it still
# starts (it may sit behind an authenticating proxy) but logs a warning that it is open.
ENV PATH=/opt/runstore/bin:$PATH \
    RUNSTORE_DB=/data/runs.db \
    RUNSTORE_HOST=0.0.0.0 \
    RUNSTORE_PORT=8000

USER 10001:10001
WORKDIR /data
# No RUN after VOLUME: some builders reset a declared volume's owner when a later step runs.
VOLUME ["/data"]
EXPOSE 8000

# The image's own Python asks /healthz on the port the server listens on (no curl in the image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/runstore/bin/python", "-c", "import os, urllib.request as r; h = os.environ.get('RUNSTORE_HOST', '0.0.0.0'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::', '[::]') else h; h = '[' + h + ']' if ':' in h and not h.startswith('[') else h; r.urlopen('http://%s:%s/healthz' % (h, os.environ.get('RUNSTORE_PORT', '8000')), timeout=4)"]

# Exec form: the server is PID 1 and gets SIGTERM itself, drains requests and closes the store.
# Arguments after the image name go to `runstore serve`; prefer RUNSTORE_* variables for the
# address and port, which the healthcheck reads too.
ENTRYPOINT ["/opt/runstore/bin/runstore", "serve"]
