# The taskq image: one image, two entry points (`taskq-worker`, the default, and `taskq-operator`).
#
# The image runs `taskq[worker,operator,api]`; the developer harness (dev/, distribution taskq-dev)
# is not in it. Stage `deps` installs the dependencies into a venv, `build` makes the taskq wheel and
# installs it next to them; the runtime stage copies both (without pip) onto a fresh base and runs as a
# non-root user. A source edit rebuilds only the small taskq layer.
#
# BASE_IMAGE must provide python3 (>= 3.11) with the venv module. On machines that cannot pull,
# `taskq-dev image build` passes a locally made Debian base and installs from a host-made
# wheelhouse (PIP_NO_INDEX=1, PIP_FIND_LINKS=/deps/wheelhouse); see docs/kind.md.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Stage `deps`: the dependencies in the venv /opt/taskq, in layers that survive source edits.
FROM ${BASE_IMAGE} AS deps
# Read by pip as environment variables during the RUN steps of the stages that declare them.
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The extras the image installs (the requirement list comes from dev/taskq_dev/image_requirements.py,
# the same code the host tooling fills the wheelhouse with).
ARG TASKQ_EXTRAS=worker,operator,api
# pyproject.toml, the requirement-list script and, when the tooling made one, the wheelhouse
# (`build*` matches nothing on a plain checkout, which is fine).
COPY pyproject.toml dev/taskq_dev/image_requirements.py build* /deps/
RUN python3 -m venv /opt/taskq \
 && python3 /deps/image_requirements.py /deps/pyproject.toml "${TASKQ_EXTRAS}" > /deps/requirements.txt \
 && /opt/taskq/bin/pip install --requirement /deps/requirements.txt \
 && echo /opt/taskq-app/lib > "$(/opt/taskq/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/taskq-app.pth"

# Stage `build`: the taskq wheel, installed into /opt/taskq-app (found through the .pth above).
FROM deps AS build
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=
RUN /opt/taskq/bin/pip install "setuptools>=77" wheel
COPY . /src
RUN /opt/taskq/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist /src \
 && /opt/taskq/bin/pip install --no-deps --target /opt/taskq-app/lib /dist/taskq-*.whl \
 && PATH=/opt/taskq-app/lib/bin:$PATH /opt/taskq/bin/python -c "import taskq.worker.main, taskq.http.serve, taskq_operator.main" \
 && ! /opt/taskq/bin/python -c "import taskq_dev" 2>/dev/null \
 && /opt/taskq/bin/pip check

# Stage `deps-slim`: the dependency venv without pip and setuptools.
FROM deps AS deps-slim
RUN /opt/taskq/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="taskq" \
      org.opencontainers.image.description="taskq worker, operator and HTTP intake (taskq-worker, taskq-operator, taskq-api)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin taskq
COPY --from=deps-slim /opt/taskq /opt/taskq
COPY --from=build /opt/taskq-app /opt/taskq-app
ENV PATH=/opt/taskq-app/lib/bin:/opt/taskq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
CMD ["taskq-worker"]
