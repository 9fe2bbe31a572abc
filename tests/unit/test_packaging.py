"""What ships: the product wheel's file list, a producer-only install that submits a task, and the
one-line hints of console scripts whose extra is missing.

The wheel is built from the checkout (`pip wheel --no-deps`); the producer install is a fresh
virtualenv with the wheel and its base dependencies only (no kopf, kubernetes, fastapi, ...), run
against the session's real RabbitMQ and store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import _extras
from taskq.client import Client
from taskq.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXTRA_ONLY_MODULES = ("kopf", "kubernetes", "fastapi", "uvicorn", "prometheus_client", "httpx")
"""Modules of the worker, api and operator extras: none may come with `pip install taskq`."""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


# --- the shim, in-process -------------------------------------------------------------------------


def test_hint_names_the_missing_module_and_the_extra() -> None:
    error = ModuleNotFoundError("No module named 'kopf'", name="kopf")
    assert _extras.missing_dependency_hint("taskq-operator", "operator", error) == (
        "taskq-operator: missing dependency 'kopf'; install taskq[operator]"
    )


@pytest.mark.parametrize("name", ["taskq", "taskq.worker.gone", "taskq_operator.x", None])
def test_a_missing_module_of_taskq_itself_is_not_blamed_on_an_extra(name: str | None) -> None:
    assert _extras.missing_dependency_hint("taskq-worker", "worker", ModuleNotFoundError("x", name=name)) is None


def test_entry_point_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "needs_absent.py").write_text("import absent_dependency_xyz\n\ndef main():\n    return 0\n")
    code = "from taskq._extras import run_entry_point; run_entry_point('taskq-demo', 'demo', 'needs_absent:main')"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(tmp_path)),
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "taskq-demo: missing dependency 'absent_dependency_xyz'; install taskq[demo]\n"


def test_entry_point_returns_what_main_returns(tmp_path: Path) -> None:
    (tmp_path / "fine.py").write_text("def main():\n    return 3\n")
    code = "from taskq._extras import run_entry_point; run_entry_point('taskq-demo', 'demo', 'fine:main')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=_clean_env(PYTHONPATH=str(tmp_path)))
    assert (result.returncode, result.stderr) == (3, "")


# --- the product wheel ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def product_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of what the wheel is made of: setuptools builds in the source tree (build/),
    # where modules deleted since an earlier build would linger and be packed, and the checkout is shared.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("worker", "operator"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("taskq-*.whl")
    return wheel


@pytest.mark.slow
def test_product_wheel_holds_taskq_and_the_operator_but_no_dev_code(product_wheel: Path) -> None:
    with zipfile.ZipFile(product_wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    top_level = {name.split("/", 1)[0] for name in names}
    assert {"taskq", "taskq_operator"} <= top_level
    assert {"taskq_dev", "tests", "bench", "dev", "examples", "charts"}.isdisjoint(top_level)
    assert top_level - {"taskq", "taskq_operator"} == {next(t for t in top_level if t.endswith(".dist-info"))}
    assert "taskq/py.typed" in names and "taskq_operator/py.typed" in names
    sources = {str(path.relative_to(REPO / folder)) for folder in ("worker", "operator")
               for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts}
    assert {name for name in names if name.endswith(".py")} == sources, "the wheel holds exactly the product modules"
    assert "taskq/_extras.py" in names and "taskq_operator/entry.py" in names
    assert "taskq-dev" not in entry_points
    for script in ("taskq =", "taskq-worker =", "taskq-api =", "taskq-operator ="):
        assert script in entry_points
    unconditional = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in unconditional if any(m.replace("_", "-") in line for m in EXTRA_ONLY_MODULES)], unconditional


# --- a producer-only install ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def producer_venv(product_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv holding the product wheel and its base dependencies, nothing else."""
    root = tmp_path_factory.mktemp("producer-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    result = subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(product_wheel)],
        capture_output=True, text=True, timeout=900, env=_clean_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield root


def _in_venv(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=env or _clean_env(), cwd=root)


@pytest.mark.slow
def test_producer_install_has_no_worker_api_or_operator_dependencies(producer_venv: Path) -> None:
    probe = textwrap.dedent(f"""
        import importlib.util, json
        names = {[*EXTRA_ONLY_MODULES, "taskq_dev", "taskq", "taskq_operator", "pika", "pymongo", "typer"]!r}
        print(json.dumps({{name: importlib.util.find_spec(name) is not None for name in names}}))
    """)
    found = json.loads(_in_venv(producer_venv, str(producer_venv / "bin" / "python"), "-c", probe).stdout)
    assert {name for name, present in found.items() if present} == {"taskq", "taskq_operator", "pika", "pymongo", "typer"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "hint"),
    [
        ("taskq-operator", "taskq-operator: missing dependency 'kopf'; install taskq[operator]"),
        ("taskq-worker", "taskq-worker: missing dependency 'prometheus_client'; install taskq[worker]"),
        ("taskq-api", "taskq-api: missing dependency 'uvicorn'; install taskq[api]"),
    ],
)
def test_scripts_without_their_extra_print_one_line_and_exit_2(producer_venv: Path, script: str, hint: str) -> None:
    result = _in_venv(producer_venv, str(producer_venv / "bin" / script))
    assert (result.returncode, result.stdout, result.stderr) == (2, "", hint + "\n")


@pytest.mark.slow
def test_producer_install_submits_a_task(
    producer_venv: Path, amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str
) -> None:
    env = _clean_env(TASKQ_AMQP_URL=amqp_url, TASKQ_MONGODB_URI=mongodb_uri, TASKQ_DATABASE=database_name,
                     TASKQ_QUEUE=queue_name)
    submitted = _in_venv(producer_venv, str(producer_venv / "bin" / "taskq"), "submit", "echo", "--args", "[7]", env=env)
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)
    with Client(settings) as client:
        status = client.status(task_id)
        assert (status["state"], status["args"], status["queue"]) == ("queued", [7], queue_name)
        client.purge(queue_name)
