#!/usr/bin/env bash
# Install the Debian packages the tooling runs (RabbitMQ, Docker, debootstrap, iproute2, chromium, and python3-venv
# when $PYTHON3 cannot make the project virtualenv) when they are missing, and check for Go (needed
# once, to build the harness tools). Used by `make demo`, `make test` and `.ci/run`; does nothing
# when everything is there.
set -euo pipefail

need=()
[ -x /usr/sbin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
[ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/bin/chromium ] || need+=(chromium)  # the dashboard tests drive it with Playwright (no browser download)
# The project virtualenv (.venv, made by the Makefile) needs venv with ensurepip: Debian's own python3
# has it only with python3-venv, a pyenv or python.org build always. Checked by making a throwaway one.
PYTHON3="${PYTHON3:-python3}"
if [ ! -x .venv/bin/python ]; then
  probe_dir="$(mktemp -d)"
  "$PYTHON3" -m venv "$probe_dir/venv" >/dev/null 2>&1 || need+=(python3-venv)
  rm -rf "$probe_dir"
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  sudo_=""
  [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v go >/dev/null || {
  echo "Go is required once, to build the harness tools (kube binaries, etcd, kwok, helm, FerretDB)" >&2
  exit 1
}
