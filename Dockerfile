FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DATA_DIR=/data WEB_HOST=0.0.0.0 WEB_PORT=8080 LOCAL_MODELS_DIR=/models
# --build-arg EXTRAS=s3,postgres,local adds the local GPU backend (torch's CUDA build from PyPI).
ARG EXTRAS=s3,postgres

RUN useradd --create-home --uid 1000 headshot && mkdir -p /data && chown headshot /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY backends ./backends
COPY storage ./storage
COPY migrations ./migrations
COPY adapters ./adapters
RUN pip install --no-cache-dir ".[${EXTRAS}]"

USER headshot
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
CMD ["headshot-bot", "run"]
