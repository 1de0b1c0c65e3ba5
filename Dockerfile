# mim-lightning in a container, for single- and multi-GPU training (Lightning DDP).
#
# BASE_IMAGE: any Debian or Ubuntu image whose python3 is 3.11+ and has the venv module (on a bare
# Debian/Ubuntu: the python3 and python3-venv packages). The default is a plain Python image, not a
# CUDA one: PyPI's torch wheel for Linux x86_64 is a CUDA build whose CUDA runtime libraries (cuBLAS,
# cuDNN, NCCL, ...) come from PyPI as pip dependencies of torch. `pip install` below thus puts the
# whole CUDA userland into the virtual environment, and the image is meant to run on GPUs under the
# NVIDIA container toolkit (`docker run --gpus all`), which supplies only the driver from the host
# (torch 2.13.0, the version constraints.txt pins, pulls CUDA 13: the driver must support it; this
# path has not been run on a GPU yet). A CUDA or PyTorch base image would only add a second copy:
# the virtual environment does not see the base's packages.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# A virtual environment: Debian's and Ubuntu's system Python refuse `pip install` (PEP 668).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib
RUN python3 -m venv /opt/venv

# Installed the way CI installs it: pip with constraints.txt. configs/ lands in
# /opt/mim-lightning/configs (e.g. /opt/mim-lightning/configs/quickstart.yaml).
WORKDIR /opt/mim-lightning
COPY pyproject.toml README.md constraints.txt ./
COPY mim_lightning ./mim_lightning
COPY configs ./configs
RUN pip install -c constraints.txt . \
    && rm -rf build ./*.egg-info

# Runs as an unprivileged user (uid 1000); `docker run --user "$(id -u):$(id -g)"` works as well and
# makes the files in a bind-mounted /runs belong to the caller.
RUN useradd --no-log-init --create-home --uid 1000 --user-group mim \
    && mkdir -p /runs \
    && chown mim:mim /runs
USER 1000:1000
VOLUME ["/runs"]
WORKDIR /runs
ENTRYPOINT ["mim"]
CMD ["--help"]
