# The openclore market server (also the image of the compose file's gateway).
#   docker build -t openclore .
#   docker run -e OPENCLORE_DATABASE_URL=postgresql://… -e OPENCLORE_ADDRESS_SECRET=… \
#     -p 8000:8000 openclore
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --create-home --home-dir /var/lib/openclore openclore \
 && mkdir -p /run/openclore/metrics && chown -R openclore /run/openclore
USER openclore
WORKDIR /var/lib/openclore
ENV OPENCLORE_HOST=0.0.0.0 \
    OPENCLORE_PORT=8000 \
    OPENCLORE_LOG_FORMAT=json \
    PROMETHEUS_MULTIPROC_DIR=/run/openclore/metrics \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
ENTRYPOINT ["openclore"]
CMD ["serve"]
