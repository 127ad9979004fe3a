"""PostgreSQL for BuildGrid's scheduler: found or installed, then a private server.

The stack runs its own PostgreSQL on 127.0.0.1 and a free port, with a fresh `buildgrid`
database each start. PostgreSQL refuses to run as root; as root it runs as the
`postgres` user, with its data in a private directory under /tmp (root's home is not
readable by that user).
"""

import hashlib
import os
import pwd
import shutil
import subprocess
import time

from tools.remote.processes import free_port, runuser, spawn, wait_port
from tools.remote.stack_state import STATE_DIR, Error, record_process, say


def pg_bindir():
    """Directory with initdb/postgres/pg_ctl, or None."""
    root = "/usr/lib/postgresql"
    if os.path.isdir(root):
        for version in sorted(
            os.listdir(root), key=lambda v: int(v) if v.isdigit() else 0, reverse=True
        ):
            bindir = os.path.join(root, version, "bin")
            if os.path.exists(os.path.join(bindir, "initdb")):
                return bindir
    initdb = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(initdb)) if initdb else None


def ensure_postgres():
    """Directory of the PostgreSQL binaries, installing them with apt-get if root."""
    bindir = pg_bindir()
    if bindir:
        return bindir
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Error(
            "PostgreSQL is missing (need initdb and postgres): install it, e.g. "
            "`apt-get install postgresql-15` on Debian bookworm"
        )
    say("installing PostgreSQL (apt-get install postgresql-15)...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = os.path.join(STATE_DIR, "apt.log")
    with open(log, "w") as fh:
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "postgresql-15"],
        ):
            if subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env) != 0:
                # Other releases name it differently; the meta package picks the right one.
                if (
                    cmd[-1] == "postgresql-15"
                    and subprocess.call(
                        cmd[:-1] + ["postgresql"], stdout=fh, stderr=subprocess.STDOUT, env=env
                    )
                    == 0
                ):
                    break
                raise Error(f"`{' '.join(cmd)}` failed (log: {log})")
    bindir = pg_bindir()
    if not bindir:
        raise Error(f"PostgreSQL installed but initdb not found (log: {log})")
    return bindir


def pg_root_dir():
    """The PostgreSQL cluster's directory for this state directory."""
    if os.geteuid() == 0:
        key = hashlib.sha256(STATE_DIR.encode()).hexdigest()[:10]
        return f"/tmp/fsdp-conformance-remote-{key}"
    return os.path.join(STATE_DIR, "pg")


def _postgres_user():
    """(user, pwd entry) to run PostgreSQL as: ("postgres", ...) as root, else (None, None)."""
    if os.geteuid() != 0:
        return None, None
    try:
        return "postgres", pwd.getpwnam("postgres")
    except KeyError as e:
        raise Error(
            "running as root but there is no `postgres` user (install postgresql-15)"
        ) from e


def _initdb(pg, pgdata, as_user):
    """Creates the database cluster in pgdata unless one is there."""
    if os.path.exists(os.path.join(pgdata, "PG_VERSION")):
        return
    shutil.rmtree(pgdata, ignore_errors=True)
    out = subprocess.run(
        as_user(
            [
                os.path.join(pg, "initdb"),
                "-D",
                pgdata,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise Error(f"initdb failed: {(out.stdout + out.stderr).strip().splitlines()[-1:]}")


def _create_database(pg, pg_port):
    """Drops and creates the `buildgrid` database: no jobs or sessions left over."""
    psql = [
        os.path.join(pg, "psql"),
        "-h",
        "127.0.0.1",
        "-p",
        str(pg_port),
        "-U",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-d",
        "postgres",
    ]
    for _ in range(50):
        out = subprocess.run(
            psql + ["-c", "DROP DATABASE IF EXISTS buildgrid", "-c", "CREATE DATABASE buildgrid"],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0:
            return
        time.sleep(0.2)
    raise Error(f"creating the buildgrid database failed: {out.stderr.strip()}")


def _own(path, pw):
    """Gives path to the user of pwd entry `pw` (the postgres user), if any."""
    if pw is not None:
        os.chown(path, pw.pw_uid, pw.pw_gid)


def start_postgres(state, pg, log_dir):
    """Starts a private PostgreSQL with a fresh `buildgrid` database; returns its URL.

    The server's pid is recorded in `state` (and saved) as soon as it exists.
    """
    user, pw = _postgres_user()
    pg_root = pg_root_dir()
    pgdata = os.path.join(pg_root, "data")
    sockdir = os.path.join(pg_root, "sock")
    os.makedirs(pg_root, mode=0o700, exist_ok=True)
    if user:
        _own(pg_root, pw)
        os.chmod(pg_root, 0o700)
    as_user = (lambda cmd: [runuser(), "-u", user, "--"] + cmd) if user else (lambda cmd: cmd)
    _initdb(pg, pgdata, as_user)
    os.makedirs(sockdir, exist_ok=True)
    _own(sockdir, pw)
    pg_port = free_port()
    pg_log = os.path.join(log_dir, "postgres.log")
    if user:
        with open(pg_log, "w"):
            pass  # Created here, so that the postgres user can write it.
        _own(pg_log, pw)
    server = [os.path.join(pg, "postgres"), "-D", pgdata, "-h", "127.0.0.1"]
    server += ["-p", str(pg_port), "-k", sockdir]
    server += ["-c", "fsync=off", "-c", "max_connections=200"]
    pid = spawn(server, pg_log, user=user)
    state.update(pg_port=pg_port, pgdata=pgdata, pg_root=pg_root)
    record_process(state, "postgres", pid)
    wait_port(pg_port, pid, "PostgreSQL", pg_log)
    _create_database(pg, pg_port)
    return f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/buildgrid"
