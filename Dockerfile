# One image for every process of the stack: api, archiver, migrate, bench.
# The service reads its Lua scripts and SQL migrations from the source tree,
# so the project is installed in editable mode from /app.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the service needs (not .venv, .data or .git of the build context).
COPY pyproject.toml README.md ./
COPY service ./service
COPY archiver ./archiver
COPY bench ./bench
COPY lua ./lua
RUN pip install -e . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin segments

USER segments
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]

CMD ["segments", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
