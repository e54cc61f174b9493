# Secateurs service image: `secateurs serve` by default; the same image runs `secateurs worker` (a Celery worker
# when SECATEURS_WORKER__DISPATCHER=celery; see docker-compose.yml for PostgreSQL + Redis + MinIO).
#
#   docker build -t secateurs .
#   docker run -p 8000:8000 -v secateurs-data:/data secateurs
#
# Configuration is environment variables SECATEURS_* (workers/settings.py, docs/CONFIG.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# An unprivileged user with a fixed uid/gid (so volume ownership and `runAsNonRoot` checks are predictable).
RUN groupadd --system --gid 10001 secateurs \
 && useradd --system --uid 10001 --gid secateurs --home-dir /home/secateurs --create-home \
        --shell /usr/sbin/nologin secateurs

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that a source change does not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY workers ./workers
COPY service ./service
RUN pip install --no-deps . \
 && rm -rf /app/build /app/*.egg-info

# Job store (SQLite by default), artifacts (unless in S3), uploads in flight, job scratch space and cached inputs
# all live under /data.
RUN mkdir -p /data && chown secateurs:secateurs /data
VOLUME ["/data"]

ENV SECATEURS_DATA_DIR=/data \
    SECATEURS_HOST=0.0.0.0 \
    SECATEURS_PORT=8000

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SECATEURS_PORT', '8000'), timeout=4)" || exit 1

CMD ["secateurs", "serve"]
