# mim-lightning for multi-GPU training: a CUDA-enabled PyTorch base image, the package installed the
# way CI installs it (pip with constraints.txt, which pins torch==2.13.0: pick a base image that
# already has it, or pip replaces the base's torch with PyPI's CUDA build of 2.13.0).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mim-lightning
COPY pyproject.toml README.md constraints.txt ./
COPY mim_lightning ./mim_lightning
COPY configs ./configs
RUN pip install -c constraints.txt .

WORKDIR /runs
ENTRYPOINT ["mim"]
CMD ["--help"]
