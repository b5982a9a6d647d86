"""The ``segments`` command: help, configuration errors, migrate, and the dev stack."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from segments_cli.main import main
from segments_dev.embedded import free_port
from segments_dev.run import dev_signing_key

CONFIG_VARS = (
    "REDIS_URL",
    "DATABASE_URL",
    "PUBLIC_URL",
    "SEGMENTS_SIGNING_KEY",
    "SEGMENTS_TOKENS",
    "SEGMENTS_DATA_DIR",
)


def _segments() -> list[str]:
    """The installed console script (next to this interpreter), else ``python -m``."""
    script = Path(sys.executable).parent / "segments"
    return [str(script)] if script.exists() else [sys.executable, "-m", "segments_cli"]


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    env.update(overrides)
    return env


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_segments(), *args],
        env=_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # reachable by the embedded PostgreSQL's system user when we are root
    path = Path(tempfile.mkdtemp(prefix="segments-cli-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_help_lists_every_command() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "dev", "archiver", "migrate", "bench"):
        assert command in result.stdout
    for name in ("REDIS_URL", "DATABASE_URL", "SEGMENTS_SIGNING_KEY"):
        assert name in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = _run()
    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.mark.parametrize(
    ("command", "name", "value"),
    [
        ("serve", "REDIS_URL", "http://localhost:6379"),
        ("serve", "SEGMENTS_SIGNING_KEY", "short"),
        ("dev", "SEGMENTS_TOKENS", "no-scope"),
        ("dev", "PUBLIC_URL", "ftp://example.com"),
        ("migrate", "DATABASE_URL", "mysql://localhost/db"),
        ("archiver", "SEGMENTS_SWEEP_INTERVAL", "-1"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(
    command: str, name: str, value: str, data_dir: Path
) -> None:
    result = _run(command, env={"SEGMENTS_DATA_DIR": str(data_dir), name: value})
    assert result.returncode == 2, result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert list(data_dir.iterdir()) == []  # nothing was started


@pytest.mark.parametrize(("command", "name"), [("serve", "REDIS_URL"), ("migrate", "DATABASE_URL")])
def test_missing_url_outside_dev_exits_2(command: str, name: str) -> None:
    result = _run(command)
    assert result.returncode == 2
    assert f"{name} is not set" in result.stderr


def test_main_returns_2_on_bad_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "nonsense")
    assert main(["serve"]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


def test_dev_signing_key_is_made_once_and_private(data_dir: Path) -> None:
    key = dev_signing_key(data_dir)
    path = data_dir / "signing.key"
    assert len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dev_signing_key(data_dir) == key


def test_dev_refuses_a_busy_port(data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run("dev", "--port", str(port), env={"SEGMENTS_DATA_DIR": str(data_dir)})
    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert not (data_dir / "redis").exists()


def test_migrate_applies_then_is_idempotent(fresh_pg_url: str) -> None:
    first = _run("migrate", env={"DATABASE_URL": fresh_pg_url})
    assert first.returncode == 0, first.stderr
    assert "applied migration" in first.stdout
    second = _run("migrate", env={"DATABASE_URL": fresh_pg_url})
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


@pytest.mark.slow
def test_dev_runs_the_stack_and_stops_everything(data_dir: Path) -> None:
    port = free_port()
    out_path = data_dir / "dev.out"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [*_segments(), "dev", "--port", str(port)],
            env=_env(SEGMENTS_DATA_DIR=str(data_dir / "data")),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while _get(f"http://127.0.0.1:{port}/healthz") != 200:
            assert proc.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.2)
        while "Swagger UI" not in out_path.read_text():  # printed right after /healthz
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.1)
        assert f"http://127.0.0.1:{port}/schema/swagger" in out_path.read_text()
        descendants = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        assert "redis-server" in names
        assert "postgres" in names
        assert "archiver" in names
        assert "serve" in names
        key = data_dir / "data" / "signing.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, out_path.read_text()
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert alive == [], alive
        assert _get(f"http://127.0.0.1:{port}/healthz") == 0
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()


# -- packaging files ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _subcommands() -> set[str]:
    from segments_cli.main import build_parser

    parser = build_parser()
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):
            return set(action.choices)
    raise AssertionError("no subcommands")


def test_compose_file_runs_the_stack() -> None:
    import yaml
    text = (ROOT / "docker-compose.yml").read_text()
    assert "$(" not in text  # compose would reject it as an invalid interpolation
    services = yaml.safe_load(text)["services"]
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {"redis", "postgres", "migrate", "api", "archiver"}
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "everysec"
    assert services["postgres"]["image"].startswith("postgres:15")
    for name in ("migrate", "api", "archiver"):
        service = services[name]
        assert service["build"] == "."
        assert service["command"][0] == "segments"
        assert service["command"][1] in _subcommands()
        assert {"REDIS_URL", "DATABASE_URL", "SEGMENTS_SIGNING_KEY"} <= set(service["environment"])
    for name in ("redis", "postgres", "api"):
        assert "test" in services[name]["healthcheck"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_dockerfile_copies_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_dockerfile_installs_the_wheel_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install -e" not in text
    assert "pip wheel" in text and "/wheels/*.whl" in text
    assert "USER segments" in text
    assert "[dev]" not in text  # no embedded servers in the production image


def test_readme_holds_the_ci_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    line = next(x for x in ci.splitlines() if x.startswith("readonly TEST_CMD="))
    command = line.split("=", 1)[1].strip('"')
    readme = (ROOT / "README.md").read_text().splitlines()
    assert command in readme
    run = "python3 -m venv .venv && .venv/bin/pip install '.[dev]' && .venv/bin/segments dev"
    assert run in readme
