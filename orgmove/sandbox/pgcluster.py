"""Local PostgreSQL clusters started from the installed server binaries.

Used by the sandbox (the embedded default) and by the test suite. A cluster lives in one directory
(``data/``, ``socket/``, ``log``), listens on 127.0.0.1 at a port of its own and is controlled with
``initdb``/``pg_ctl``. PostgreSQL refuses to run as root, so when we are root every server command
runs as the ``postgres`` operating-system user and the directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from orgmove.errors import EnvironmentProblem

SUPERUSER = "postgres"

# Sandbox and test clusters trade durability for speed: they hold disposable data.
FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    # Commits reach the kernel before they are acknowledged, so killing the server (a test
    # does) loses nothing acknowledged; fsync=off only gives up safety against an OS crash.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "max_wal_size": "'2GB'",
    "shared_buffers": "'128MB'",
    "max_connections": "200",
    # Change capture (orgmove.capture) needs logical decoding; tests create many slots at once.
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %a '",
    "timezone": "'UTC'",
}


def find_pg_bin() -> Path:
    """The directory of the newest installed PostgreSQL server binaries."""
    override = os.environ.get("ORGMOVE_PG_BIN")
    if override:
        return Path(override)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    raise EnvironmentProblem(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found.",
        fix="install them (`make postgres` runs `apt-get install postgresql`) or set "
        "ORGMOVE_PG_BIN to the directory that holds initdb",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _as_server_user(argv: list[str]) -> list[str]:
    if not _running_as_root():
        return argv
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(_shell_quote(a) for a in argv)]


def _shell_quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def _hand_to_server_user(path: Path) -> None:
    if not _running_as_root():
        return
    entry = pwd.getpwnam("postgres")
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    # Every ancestor must be traversable by the server user.
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            with contextlib.suppress(PermissionError):
                os.chmod(parent, mode | 0o001)


@dataclass
class LocalCluster:
    """One PostgreSQL cluster in ``directory``. ``password`` is the superuser's password."""

    directory: Path
    port: int
    password: str = "orgmove"
    settings: dict[str, str] | None = None

    def __post_init__(self) -> None:
        # Server commands run from "/" (the server user may not enter the caller's directory).
        self.directory = Path(self.directory).absolute()

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            _as_server_user(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            check=False,
        )
        return proc

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized():
            return
        bin_dir = find_pg_bin()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        _hand_to_server_user(self.directory)
        proc = self._run(
            [
                str(bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", SUPERUSER,
                "--pwfile", str(pwfile),
                "--auth-local", "trust",
                "--auth-host", "scram-sha-256",
                "-E", "UTF8",
                "--locale", "C.UTF-8",
                "--no-sync",
            ]
        )
        pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise EnvironmentProblem(
                f"initdb failed in {self.data_dir}: {proc.stderr.strip()[-500:]}",
                fix="check that the directory is writable and the disk is not full",
            )
        conf = dict(FAST_SETTINGS)
        conf.update(self.settings or {})
        conf["port"] = str(self.port)
        conf["listen_addresses"] = "'127.0.0.1'"
        conf["unix_socket_directories"] = f"'{self.socket_dir}'"
        with open(self.data_dir / "postgresql.auto.conf", "a") as fh:
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")

    def is_running(self) -> bool:
        if not self.initialized():
            return False
        proc = self._run([str(find_pg_bin() / "pg_ctl"), "status", "-D", str(self.data_dir)])
        return proc.returncode == 0

    def start(self, timeout: float = 60) -> None:
        self.init()
        if self.is_running():
            return
        proc = self._run(
            [
                str(find_pg_bin() / "pg_ctl"),
                "start",
                "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-w",
                "-t", str(int(timeout)),
                "-o", f"-p {self.port}",
            ],
            timeout=timeout + 10,
        )
        if proc.returncode != 0:
            tail = ""
            with contextlib.suppress(OSError):
                tail = self.log_file.read_text()[-800:]
            raise EnvironmentProblem(
                f"PostgreSQL in {self.data_dir} did not start: {proc.stderr.strip()} {tail}",
                fix=f"read {self.log_file}; a port conflict means another server uses {self.port}",
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ):
                return
            time.sleep(0.05)
        raise EnvironmentProblem(
            f"PostgreSQL on port {self.port} is not accepting connections",
            fix=f"read {self.log_file}",
        )

    def stop(self, mode: str = "fast") -> None:
        if not self.initialized():
            return
        self._run(
            [str(find_pg_bin() / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w"],
            timeout=60,
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
