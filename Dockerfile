# Sightline on Debian 12 with Python 3.11, installed the same way as `make run`.
# Build: docker build -t sightline .
# Run:   docker run -p 127.0.0.1:7860:7860 sightline
# NOTE: the app has no login yet, so publish the port on the loopback address only.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        make tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd ffmpeg fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/sightline
COPY pyproject.toml README.md Makefile ./
COPY scripts/ scripts/
COPY core/ core/
COPY app/ app/
COPY knowledge_base/ knowledge_base/
COPY assets/ assets/

# torch first, so that no other package pulls a CUDA build.
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir torch==2.13.0 \
    && .venv/bin/pip install --no-cache-dir -e .

ENV SIGHTLINE_DATA_DIR=/var/lib/sightline \
    SIGHTLINE_HOST=0.0.0.0 \
    GRADIO_ANALYTICS_ENABLED=False
EXPOSE 7860
CMD [".venv/bin/sightline", "serve"]
