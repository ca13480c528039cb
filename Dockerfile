# The scoring service in a container, built from the wheel (the configs travel inside it):
#   docker build -t churnwatch .
#   docker run --rm -p 8000:8000 -v "$PWD/checkpoints/demo:/models:ro" churnwatch
# then POST http://localhost:8000/v1/score (docs/SERVING.md). Any key of `churnwatch serve` can be
# appended: docker run ... churnwatch serve model_path=/models/model.pt host=0.0.0.0 workers=2
# A GPU image: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 and `docker run --gpus all`.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY conf ./conf
RUN pip install --no-cache-dir "hatchling>=1.26" && pip wheel --no-deps --no-build-isolation -w /dist .

FROM python:3.11-slim
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# torch first, from the CPU index unless told otherwise: plain `pip install torch` pulls a multi-GB CUDA build
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY --from=wheel /dist/*.whl /tmp/
RUN pip install --no-cache-dir "$(ls /tmp/churnwatch-*.whl)[serve]" && rm /tmp/churnwatch-*.whl
RUN useradd --create-home churnwatch
USER churnwatch
WORKDIR /home/churnwatch
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
ENTRYPOINT ["churnwatch"]
CMD ["serve", "model_path=/models/model.pt", "host=0.0.0.0", "port=8000", "hydra.run.dir=/tmp/churnwatch-serve"]
