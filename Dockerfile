# The taskq image: one image, two entry points (`taskq-worker`, the default, and `taskq-operator`).
#
# Stage `build` makes the taskq wheel and installs it with its dependencies into a venv;
# the runtime stage copies only that venv onto a fresh base and runs as a non-root user.
#
# BASE_IMAGE must provide python3 (>= 3.11) with the venv module. On machines that cannot pull,
# `taskq-dev image build` passes a locally made Debian base and installs from a host-made
# wheelhouse (PIP_NO_INDEX=1, PIP_FIND_LINKS=/deps/wheelhouse); see docs/kind.md.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Read by pip as environment variables during the RUN steps of this stage only.
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Dependencies first, in a layer that survives source edits: pyproject.toml plus, when the tooling
# made one, the wheelhouse (`build*` matches nothing on a plain checkout, which is fine).
COPY pyproject.toml build* /deps/
RUN python3 -m venv /opt/taskq \
 && python3 -c "import tomllib; print(*tomllib.load(open('/deps/pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
      > /deps/requirements.txt \
 && /opt/taskq/bin/pip install --upgrade "setuptools>=69" wheel \
 && /opt/taskq/bin/pip install --requirement /deps/requirements.txt
# Then the taskq wheel itself, installed into the same venv; the build tools leave with pip.
COPY . /src
RUN /opt/taskq/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist /src \
 && /opt/taskq/bin/pip install --no-deps /dist/taskq-*.whl \
 && /opt/taskq/bin/pip check \
 && /opt/taskq/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/taskq/bin/python -c "import taskq.worker.main, taskq_operator.main"

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="taskq" \
      org.opencontainers.image.description="taskq worker and operator (taskq-worker, taskq-operator)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin taskq
COPY --from=build /opt/taskq /opt/taskq
ENV PATH=/opt/taskq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
CMD ["taskq-worker"]
