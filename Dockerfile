FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DATA_DIR=/data WEB_HOST=0.0.0.0 WEB_PORT=8080 LOCAL_MODELS_DIR=/models
# --build-arg EXTRAS=s3,postgres,local,gpu adds the local GPU backend (torch's CUDA build from
# PyPI, and onnxruntime's GPU build in place of its CPU build).
ARG EXTRAS=s3,postgres

# The model folders are a volume too (`headshot-bot models download` writes there as this user).
RUN useradd --create-home --uid 1000 headshot && mkdir -p /data /models \
    && chown headshot /data /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY backends ./backends
COPY storage ./storage
COPY migrations ./migrations
COPY adapters ./adapters
COPY deploy/healthcheck.py deploy/use-onnxruntime-gpu.sh ./deploy/
RUN pip install --no-cache-dir ".[${EXTRAS}]" && sh deploy/use-onnxruntime-gpu.sh

USER headshot
VOLUME ["/data"]
EXPOSE 8080
# GET /readyz (the database can be written, the chat gateways are up) on the port and address
# the bot reads from its settings (WEB_PORT, WEB_HOST).
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "/app/deploy/healthcheck.py"]
CMD ["headshot-bot", "run"]
