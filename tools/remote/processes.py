"""Processes of the stack: free ports, starting detached, waiting for a port, stopping."""

import os
import shutil
import signal
import socket
import subprocess
import time

from tools.remote.stack_state import Error


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
