# One image for every process of the stack: api, archiver, migrate.
# Stage 1 builds the wheel (Lua scripts and SQL migrations are package data);
# stage 2 installs only that wheel, without the dev extra: no embedded Redis
# or PostgreSQL, no build tools, no source tree. Runs as a non-root user.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY segments_core ./segments_core
COPY service ./service
COPY archiver ./archiver
COPY segments_cli ./segments_cli
COPY segments_dev ./segments_dev
COPY bench ./bench
COPY segments_restore ./segments_restore
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin segments

USER segments
WORKDIR /tmp
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]

CMD ["segments", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
