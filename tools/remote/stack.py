#!/usr/bin/env python3
"""Starts and stops a local remote-execution stack: tools/remote/start, tools/remote/stop.

The stack is PostgreSQL (BuildGrid's scheduler database, on 127.0.0.1 and a free port),
a BuildGrid 0.4.4 server (REAPI: Execution, ActionCache, CAS, ByteStream, Bots) on
127.0.0.1:PORT, and N local workers (tools/remote/worker.py). Everything it starts is
recorded in a state file, so `stop` ends exactly those processes and leaves none behind.
Standard library only: it runs under the system python3.
"""

import argparse
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.append(os.path.dirname(HERE))
import device_table  # noqa: E402  tools/device_table.py: testing/devices.py without torch

ME = "tools/remote"
DEFAULT_PORT = 50151
CACHE = os.environ.get("FSDP_CACHE_DIR") or os.path.expanduser("~/.cache/fsdp-conformance")
# One stack per state directory (the integration test uses its own).
STATE_DIR = os.path.abspath(
    os.environ.get("FSDP_REMOTE_STATE_DIR") or os.path.join(CACHE, "remote")
)
STATE_FILE = os.path.join(STATE_DIR, "state.json")
DEVICES = tuple(device_table.load().DEVICES)


class Error(Exception):
    """A failure to report in one line, without a traceback."""


def say(msg):
    """Prints a progress or error line on stderr."""
    print(f"{ME}: {msg}", file=sys.stderr, flush=True)


# --- dependencies -------------------------------------------------------------------


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


def ensure_venv():
    """The BuildGrid environment from tools/remote/requirements.lock (tools/make_venv)."""
    out = subprocess.run(
        [
            os.path.join(ROOT, "tools", "make_venv"),
            os.path.join(HERE, "requirements.lock"),
            "buildgrid-venv",
            "the BuildGrid environment",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        raise Error(lines[-1] if lines else f"tools/make_venv failed ({out.returncode})")
    sys.stderr.write(out.stderr)
    return out.stdout.strip()


# --- processes ----------------------------------------------------------------------


def port_free(port):
    """Whether `port` on 127.0.0.1 can be bound now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    """A port on 127.0.0.1 that the kernel reports free now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def alive(pid):
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def runuser():
    """Path of runuser, used to start PostgreSQL as `postgres` when root."""
    found = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None
    )
    if not found:
        raise Error("running as root needs runuser (util-linux) to start PostgreSQL as `postgres`")
    return found


def spawn(cmd, log, user=None, env=None):
    """Starts cmd detached (own session), output to log; returns its pid."""
    if user:
        cmd = [runuser(), "-u", user, "--"] + cmd
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    return proc.pid


def wait_port(port, pid, what, log, seconds=60):
    """Waits until `port` accepts connections; raises if `pid` exits or time runs out."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not alive(pid):
            raise Error(f"{what} exited at start: {tail(log)} (log: {log})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise Error(f"{what} did not listen on 127.0.0.1:{port} within {seconds} s (log: {log})")


def tail(log, n=1):
    """The last `n` non-empty lines of `log`, joined with ` | `."""
    try:
        with open(log, errors="replace") as fh:
            lines = [line.strip() for line in fh if line.strip()]
        return " | ".join(lines[-n:]) if lines else "(no output)"
    except OSError:
        return "(no log)"


def stop_pid(pid, sig=signal.SIGTERM, grace=10.0, group=True):
    """Signals pid (its process group if group) and waits; SIGKILL after grace seconds."""
    if not alive(pid):
        return
    kill = (lambda s: os.killpg(pid, s)) if group else (lambda s: os.kill(pid, s))
    try:
        kill(sig)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    try:
        kill(signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(50):
        if not alive(pid):
            return
        time.sleep(0.1)


# --- configuration ------------------------------------------------------------------


def property_labels(workers):
    """Static property set: exactly the platforms the given workers offer.

    An action whose properties are not all in one label is refused at once with
    FAILED_PRECONDITION ("Could not find property set ..."), so a `cuda` test sent to a
    stack of CPU workers fails immediately instead of queueing forever.
    """
    labels = {}
    for w in workers:
        required = [list(p) for p in w.get("properties", [])]
        if w["device"] == "cpu":
            labels["cpu"] = [["device", "cpu"]] + required
        else:
            for n in range(1, w["gpus"] + 1):
                pool = f"{w['device']}-{n}"
                labels[pool] = [
                    ["device", w["device"]],
                    ["gpus", str(n)],
                    ["Pool", pool],
                ] + required
    return labels


def server_config(port, db_url, cas_dir, workers):
    """BuildGrid's YAML configuration for the given port, database, CAS and workers."""
    labels = property_labels(workers)
    label_yaml = "".join(
        f"          - label: {name}\n            properties:\n"
        + "".join(f'              - [{k}, "{v}"]\n' for k, v in props)
        for name, props in sorted(labels.items())
    )
    return f"""\
# Generated by tools/remote/start: a local BuildGrid for fsdp-conformance.
description: fsdp-conformance local remote execution
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
monitoring:
  enabled: false
thread-pool-size: 200
connections:
  - !sql-connection &sql
    connection-string: {db_url}
    pool-size: 10
    max-overflow: 20
storages:
  - !disk-storage &cas
    path: {cas_dir}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *ac
    # Dead sessions are reaped after this (workers report termination, so it is rare).
    bot-session-keepalive-timeout: 60
    poll-interval: 0.1
    # Only the platforms the workers offer; anything else is refused at once.
    property-set: !static-property-set
      property-labels:
{label_yaml}    assigners:
      - !priority-age-assigner
        interval: 0.1
instances:
  - name: ""
    description: fsdp-conformance
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *scheduler
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""


# --- start / stop -------------------------------------------------------------------


def load_state():
    """The saved state of the running stack, or None if there is none."""
    try:
        with open(STATE_FILE) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def save_state(state):
    """Writes the stack's state atomically (temporary file, then rename)."""
    tmp = STATE_FILE + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=2)
    os.replace(tmp, STATE_FILE)


def parse_worker_specs(args):
    """The workers to start, from --workers, --device, --gpus and --extra-worker."""
    properties = []
    for prop in args.require_property or []:
        key, eq, value = prop.partition("=")
        if not key or not eq:
            raise Error(f"--require-property {prop}: expected KEY=VALUE")
        properties.append([key, value])
    workers = []
    for i in range(args.workers):
        workers.append({"name": f"worker-{i + 1}", "device": args.device, "gpus": args.gpus})
    for spec in args.extra_worker or []:
        device, _, gpus = spec.partition(":")
        if device not in DEVICES:
            raise Error(f"--extra-worker {spec}: device must be one of {', '.join(DEVICES)}")
        n = int(gpus) if gpus.isdigit() else 0
        if device != "cpu" and n < 1:
            raise Error(
                f"--extra-worker {spec}: an accelerator worker needs a count, e.g. {device}:2"
            )
        workers.append(
            {
                "name": f"worker-{len(workers) + 1}",
                "device": device,
                "gpus": n if device != "cpu" else 0,
            }
        )
    if not workers:
        raise Error("no workers: use --workers N (N >= 1) or --extra-worker")
    for w in workers:
        w["properties"] = properties
    return workers


def pg_root_dir():
    """The PostgreSQL cluster's directory for this state directory."""
    if os.geteuid() == 0:
        key = hashlib.sha256(STATE_DIR.encode()).hexdigest()[:10]
        return f"/tmp/fsdp-conformance-remote-{key}"
    return os.path.join(STATE_DIR, "pg")


def purge():
    """Deletes the database cluster and the CAS (the BuildGrid environment stays)."""
    shutil.rmtree(pg_root_dir(), ignore_errors=True)
    shutil.rmtree(os.path.join(STATE_DIR, "cas"), ignore_errors=True)


def start(args):
    """Starts the stack: PostgreSQL, then the BuildGrid server, then the workers."""
    if args.device != "cpu" and args.gpus < 1:
        raise Error(f"--device {args.device} needs --gpus N")
    if args.device == "cpu":
        args.gpus = 0
    workers = parse_worker_specs(args)
    os.makedirs(STATE_DIR, exist_ok=True)
    state = load_state()
    if state and any(alive(p["pid"]) for p in state["processes"]):
        if (
            state["port"] == args.port
            and state["workers"] == workers
            and all(alive(p["pid"]) for p in state["processes"])
        ):
            say(
                f"already running on grpc://127.0.0.1:{state['port']} with "
                f"{len(state['workers'])} worker(s); nothing to do"
            )
            return
        say("a different stack is running; stopping it first")
        stop(argparse.Namespace(quiet=True))
    if not port_free(args.port):
        raise Error(
            f"port {args.port} on 127.0.0.1 is taken (by another program); free it or "
            f"pass --port N (and --remote_executor=grpc://127.0.0.1:N to Bazel)"
        )
    pg = ensure_postgres()
    venv = ensure_venv()

    state = {
        "port": args.port,
        "instance": "",
        "workers": workers,
        "processes": [],
        "venv": venv,
        "state_dir": STATE_DIR,
    }
    # Record every process as soon as it exists, so a failed start is still stoppable.
    save_state(state)
    log_dir = os.path.join(STATE_DIR, "logs")
    os.makedirs(log_dir, exist_ok=True)
    for name in os.listdir(log_dir):
        os.unlink(os.path.join(log_dir, name))

    db_url = start_postgres(state, pg, log_dir)
    start_server(state, venv, db_url, log_dir)
    start_workers(state, venv, log_dir)
    offered = ", ".join(
        sorted(
            {
                ",".join(
                    [f"device={w['device']}"]
                    + ([f"gpus<={w['gpus']}"] if w["gpus"] else [])
                    + [f"{k}={v}" for k, v in w.get("properties", [])]
                )
                for w in workers
            }
        )
    )
    say(
        f'remote execution on grpc://127.0.0.1:{args.port} (instance ""), '
        f"{len(workers)} worker(s) offering {offered}; logs in {log_dir}"
    )
    say("run: tools/bazel test //fsdp/... --config=remote    stop: tools/remote/stop")


def _record(state, role, pid):
    state["processes"].append({"role": role, "pid": pid})
    save_state(state)


def start_postgres(state, pg, log_dir):
    """Starts a private PostgreSQL with a fresh `buildgrid` database; returns its URL."""
    # PostgreSQL refuses to run as root; as root it runs as the postgres user with its data
    # in a private directory under /tmp (root's home is not readable by that user).
    user = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as e:
            raise Error(
                "running as root but there is no `postgres` user (install postgresql-15)"
            ) from e
        user = "postgres"
    pg_root = pg_root_dir()
    pgdata = os.path.join(pg_root, "data")
    sockdir = os.path.join(pg_root, "sock")
    os.makedirs(pg_root, mode=0o700, exist_ok=True)
    if user:
        os.chown(pg_root, pw.pw_uid, pw.pw_gid)
        os.chmod(pg_root, 0o700)
    as_user = (lambda cmd: [runuser(), "-u", user, "--"] + cmd) if user else (lambda cmd: cmd)

    if not os.path.exists(os.path.join(pgdata, "PG_VERSION")):
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
    os.makedirs(sockdir, exist_ok=True)
    if user:
        os.chown(sockdir, pw.pw_uid, pw.pw_gid)
    pg_port = free_port()
    pg_log = os.path.join(log_dir, "postgres.log")
    if user:
        with open(pg_log, "w"):
            pass
        os.chown(pg_log, pw.pw_uid, pw.pw_gid)
    pid = spawn(
        [
            os.path.join(pg, "postgres"),
            "-D",
            pgdata,
            "-h",
            "127.0.0.1",
            "-p",
            str(pg_port),
            "-k",
            sockdir,
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ],
        pg_log,
        user=user,
    )
    state.update(pg_port=pg_port, pgdata=pgdata, pg_root=pg_root)
    _record(state, "postgres", pid)
    wait_port(pg_port, pid, "PostgreSQL", pg_log)
    # A fresh database each start: no jobs or bot sessions left over from an earlier stack.
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
            break
        time.sleep(0.2)
    else:
        raise Error(f"creating the buildgrid database failed: {out.stderr.strip()}")
    return f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/buildgrid"


def start_server(state, venv, db_url, log_dir):
    """Migrates the database, writes server.yml and starts BuildGrid on state's port."""
    port = state["port"]
    bgd = os.path.join(venv, "bin", "bgd")
    out = subprocess.run([bgd, "migrate", "apply", db_url], capture_output=True, text=True)
    if out.returncode != 0:
        raise Error(
            f"bgd migrate apply failed: {(out.stdout + out.stderr).strip().splitlines()[-1:]}"
        )
    cas_dir = os.path.join(STATE_DIR, "cas")
    os.makedirs(cas_dir, exist_ok=True)
    config = os.path.join(STATE_DIR, "server.yml")
    with open(config, "w") as fh:
        fh.write(server_config(port, db_url, cas_dir, state["workers"]))
    bg_log = os.path.join(log_dir, "server.log")
    if not port_free(port):
        raise Error(f"port {port} on 127.0.0.1 was taken while starting; pass --port N")
    pid = spawn([bgd, "server", "start", config], bg_log)
    _record(state, "server", pid)
    wait_port(port, pid, "BuildGrid server", bg_log)


def start_workers(state, venv, log_dir):
    """Starts one worker.py per planned worker and waits until each has a bot session."""
    python = os.path.join(venv, "bin", "python3")
    started = []
    for w in state["workers"]:
        log = os.path.join(log_dir, f"{w['name']}.log")
        cmd = [
            python,
            os.path.join(HERE, "worker.py"),
            "--server",
            f"grpc://127.0.0.1:{state['port']}",
            "--name",
            w["name"],
            "--device",
            w["device"],
            "--gpus",
            str(w["gpus"]),
            "--work-dir",
            os.path.join(STATE_DIR, "work", w["name"]),
        ]
        for key, value in w.get("properties", []):
            cmd += ["--require-property", f"{key}={value}"]
        pid = spawn(cmd, log)
        _record(state, w["name"], pid)
        started.append((w["name"], pid, log))
    # Wait until every worker has a session, so the first action finds them.
    deadline = time.time() + 30
    for name, pid, log in started:
        while "session" not in tail(log, 50):
            if not alive(pid):
                raise Error(f"{name} exited at start: {tail(log)} (log: {log})")
            if time.time() > deadline:
                raise Error(f"{name} did not register with the server (log: {log})")
            time.sleep(0.2)


def stop(args):
    """Stops the workers, the server, then PostgreSQL, and removes the saved state."""
    state = load_state()
    if not state:
        if getattr(args, "purge", False):
            purge()
        if not getattr(args, "quiet", False):
            say("nothing running")
        return
    procs = state.get("processes", [])
    # Workers first (they hand back leases and report termination), then the server,
    # then PostgreSQL (a fast shutdown).
    workers = [p for p in procs if p["role"].startswith("worker")]
    for p in workers:
        if alive(p["pid"]):
            os.kill(p["pid"], signal.SIGTERM)
    for p in workers:
        stop_pid(p["pid"], grace=15)
    for p in procs:
        if p["role"] == "server":
            stop_pid(p["pid"], signal.SIGTERM, grace=10)
    for p in procs:
        if p["role"] == "postgres":
            # SIGINT: PostgreSQL's fast shutdown. Its process group holds its helpers.
            stop_pid(p["pid"], signal.SIGINT, grace=20)
    left = [f"{p['role']} (pid {p['pid']})" for p in procs if alive(p["pid"])]
    if left:
        raise Error(f"could not stop: {', '.join(left)}")
    os.unlink(STATE_FILE)
    shutil.rmtree(os.path.join(STATE_DIR, "work"), ignore_errors=True)
    if getattr(args, "purge", False):
        purge()
    if not getattr(args, "quiet", False):
        say(f"stopped {len(procs)} process(es)")


def status(_args):
    """Prints each process of the stack and whether it runs; 0 if all do."""
    state = load_state()
    if not state:
        print("not running")
        return 1
    for p in state["processes"]:
        print(f"{p['role']:10} pid {p['pid']:>7}  {'running' if alive(p['pid']) else 'gone'}")
    print(f"executor   grpc://127.0.0.1:{state['port']}")
    return 0 if all(alive(p["pid"]) for p in state["processes"]) else 1


def main(argv=None):
    """Parses the command line and runs start, stop or status."""
    p = argparse.ArgumentParser(prog=ME)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start PostgreSQL, BuildGrid and workers")
    s.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("FSDP_REMOTE_PORT", DEFAULT_PORT)),
        help=f"REAPI port on 127.0.0.1 (default {DEFAULT_PORT})",
    )
    s.add_argument("--workers", type=int, default=2, help="number of workers (default 2)")
    s.add_argument("--device", default="cpu", choices=DEVICES, help="device the workers offer")
    s.add_argument("--gpus", type=int, default=0, help="accelerators per worker (non-cpu devices)")
    s.add_argument(
        "--extra-worker",
        action="append",
        metavar="DEVICE[:GPUS]",
        help="one more worker of another kind, e.g. cuda:4 (repeatable)",
    )
    s.add_argument(
        "--require-property",
        action="append",
        metavar="KEY=VALUE",
        help="every worker offers KEY=VALUE and refuses actions without it, like a "
        "hosted fleet that needs an image or pool named (repeatable)",
    )
    t = sub.add_parser("stop", help="stop everything start started")
    t.add_argument(
        "--purge", action="store_true", help="also delete the database cluster and the CAS"
    )
    sub.add_parser("status", help="show the processes of the stack")
    args = p.parse_args(argv)
    try:
        if args.cmd == "start":
            if args.workers < 0:
                raise Error("--workers must be >= 0")
            try:
                start(args)
            except BaseException:
                stop(argparse.Namespace(quiet=True))  # Leave nothing half-started behind.
                raise
        elif args.cmd == "stop":
            stop(args)
        else:
            return status(args)
    except Error as e:
        say(f"error: {e}")
        return 1
    except OSError as e:
        say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
