#!/usr/bin/env python3
"""Starts and stops a local remote-execution stack: tools/remote/start, tools/remote/stop.

The stack is PostgreSQL (BuildGrid's scheduler database, on 127.0.0.1 and a free port;
postgres.py), a BuildGrid 0.4.4 server (REAPI: Execution, ActionCache, CAS, ByteStream,
Bots) on 127.0.0.1:PORT (server_config.py), and N local workers (worker.py). Everything
it starts is recorded in a state file (stack_state.py), so `stop` ends exactly those
processes (processes.py) and leaves none behind.
Standard library only: it runs under the system python3.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

if __package__ in (None, ""):
    # Run as a file: the modules beside it are the package tools.remote, so the checkout
    # root goes first on the path instead of this directory.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The device table's loader needs no torch.
from tools import device_table  # noqa: E402 (path set above)
from tools.remote.postgres import ensure_postgres, pg_root_dir, start_postgres  # noqa: E402
from tools.remote.processes import alive, port_free, spawn, stop_pid, tail, wait_port  # noqa: E402
from tools.remote.server_config import server_config  # noqa: E402
from tools.remote.stack_state import (  # noqa: E402
    ME,
    STATE_DIR,
    STATE_FILE,
    Error,
    load_state,
    record_process,
    save_state,
    say,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_PORT = 50151
DEVICES = tuple(device_table.load().DEVICES)


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


def purge():
    """Deletes the database cluster and the CAS (the BuildGrid environment stays)."""
    shutil.rmtree(pg_root_dir(), ignore_errors=True)
    shutil.rmtree(os.path.join(STATE_DIR, "cas"), ignore_errors=True)


def _running_stack_matches(args, workers):
    """True if the same stack already runs; stops a different one that does."""
    state = load_state()
    if not state or not any(alive(p["pid"]) for p in state["processes"]):
        return False
    if (
        state["port"] == args.port
        and state["workers"] == workers
        and all(alive(p["pid"]) for p in state["processes"])
    ):
        say(
            f"already running on grpc://127.0.0.1:{state['port']} with "
            f"{len(state['workers'])} worker(s); nothing to do"
        )
        return True
    say("a different stack is running; stopping it first")
    stop(argparse.Namespace(quiet=True))
    return False


def _fresh_log_dir():
    """STATE_DIR/logs, emptied."""
    log_dir = os.path.join(STATE_DIR, "logs")
    os.makedirs(log_dir, exist_ok=True)
    for name in os.listdir(log_dir):
        os.unlink(os.path.join(log_dir, name))
    return log_dir


def _offered(workers):
    """The platforms the workers offer, for the closing message."""
    return ", ".join(
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


def start(args):
    """Starts the stack: PostgreSQL, then the BuildGrid server, then the workers."""
    if args.device != "cpu" and args.gpus < 1:
        raise Error(f"--device {args.device} needs --gpus N")
    if args.device == "cpu":
        args.gpus = 0
    workers = parse_worker_specs(args)
    os.makedirs(STATE_DIR, exist_ok=True)
    if _running_stack_matches(args, workers):
        return
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
    log_dir = _fresh_log_dir()
    db_url = start_postgres(state, pg, log_dir)
    start_server(state, venv, db_url, log_dir)
    start_workers(state, venv, log_dir)
    say(
        f'remote execution on grpc://127.0.0.1:{args.port} (instance ""), '
        f"{len(workers)} worker(s) offering {_offered(workers)}; logs in {log_dir}"
    )
    say("run: tools/bazel test //fsdp/... --config=remote    stop: tools/remote/stop")


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
    record_process(state, "server", pid)
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
        record_process(state, w["name"], pid)
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
