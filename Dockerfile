# The training image (launch/image.sh builds and pushes it; docs/guides/tpu.md): pinned Python, the
# dependencies that setup.cfg pins in a layer of their own, then the code, so that a code change
# rebuilds in seconds. ACCELERATOR picks the setup.cfg extra: tpu (jax[tpu] with libtpu) or
# gpu (jax[cuda12], CUDA libraries from PyPI; the host provides the driver).
#
#   docker build --build-arg ACCELERATOR=tpu -t rar_jax:tpu .
#   docker run --rm rar_jax:tpu python -m rar_jax.main --config=configs/digits.py --workdir=/tmp/w
FROM python:3.11.7-slim-bookworm

ARG ACCELERATOR=tpu
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app
WORKDIR /app

# Dependencies: only setup.cfg decides this layer.
COPY setup.cfg launch/requirements.py /tmp/deps/
RUN python /tmp/deps/requirements.py /tmp/deps/setup.cfg "${ACCELERATOR}" > /tmp/deps/requirements.txt \
    && pip install --no-cache-dir -r /tmp/deps/requirements.txt \
    && rm -rf /tmp/deps

# The code (see .dockerignore); imported from /app through PYTHONPATH, configs/ next to it.
COPY . /app

# Any command works (XPK passes its own); this one is a quick check that the image imports.
CMD ["python", "-c", "import jax, rar_jax.main; print(jax.devices())"]
