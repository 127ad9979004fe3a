"""One leased action, executed in a thread: fetch, stage, run, upload.

The worker (worker.py) holds the bot session and hands each new lease to a Job; the Job
fills in an ActionResult and a status that the worker reports back.
"""

import logging
import os
import shutil
import signal
import subprocess
import threading
import uuid

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.google.rpc import code_pb2

from tools.remote.action_files import collect_outputs, file_blob, stage

LOG = logging.getLogger("worker")


class Job:
    """One lease being executed in a thread."""

    def __init__(self, worker, lease):
        self.worker = worker
        self.lease = lease
        self.done = threading.Event()
        self.status = code_pb2.OK
        self.message = ""
        self.result = re_pb2.ActionResult()
        self.proc = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, name=f"job-{lease.id}", daemon=True)

    def start(self):
        """Starts executing the lease in the job's thread."""
        self.thread.start()

    def cancel(self):
        """Cancels the job, killing the action's process group if it runs."""
        self.cancelled = True
        proc = self.proc
        if proc and proc.poll() is None:
            _kill_group(proc)

    def _run(self):
        root = os.path.join(self.worker.work_dir, "job-" + uuid.uuid4().hex[:12])
        try:
            self._execute(root)
        except Exception as e:
            LOG.exception("lease %s failed", self.lease.id)
            self.status = code_pb2.INTERNAL
            self.message = f"worker {self.worker.bot_id}: {type(e).__name__}: {e}"
        finally:
            shutil.rmtree(root, ignore_errors=True)
            self.done.set()

    def _execute(self, root):
        meta = self.result.execution_metadata
        meta.worker = self.worker.bot_id
        _now(meta.worker_start_timestamp)
        action, command = self._fetch()
        missing = self.worker.missing_requirements(command.platform)
        if missing:
            # A fleet whose workers need a property (an image, a pool) the action lacks.
            self.status = code_pb2.FAILED_PRECONDITION
            self.message = (
                f"worker {self.worker.bot_id} requires {', '.join(missing)}; the "
                f"action's platform has {platform_text(command.platform)}"
            )
            return
        _now(meta.input_fetch_start_timestamp)
        workdir = self._stage(action, command, root)
        _now(meta.input_fetch_completed_timestamp)
        out_path, err_path = root + ".stdout", root + ".stderr"
        try:
            _now(meta.execution_start_timestamp)
            self._run_command(action, command, workdir, out_path, err_path)
            _now(meta.execution_completed_timestamp)
            if self.cancelled:
                return
            _now(meta.output_upload_start_timestamp)
            self._upload(command, workdir, out_path, err_path)
            _now(meta.output_upload_completed_timestamp)
            _now(meta.worker_completed_timestamp)
            LOG.info("lease %s: exit code %d", self.lease.id, self.result.exit_code)
        finally:
            for p in (out_path, err_path):
                if os.path.exists(p):
                    os.unlink(p)

    def _fetch(self):
        """Returns the lease's Action and its Command, read from CAS as needed."""
        cas = self.worker.cas
        action = re_pb2.Action()
        if self.lease.payload.Is(re_pb2.Action.DESCRIPTOR):
            self.lease.payload.Unpack(action)
        else:
            dg = re_pb2.Digest()
            self.lease.payload.Unpack(dg)
            action.ParseFromString(cas.read([dg])[dg.hash])
        command = re_pb2.Command()
        command.ParseFromString(cas.read([action.command_digest])[action.command_digest.hash])
        LOG.info("lease %s: platform %s", self.lease.id, platform_text(command.platform))
        return action, command

    def _stage(self, action, command, root):
        """Writes the input root under root; returns the command's working directory."""
        stage(self.worker.cas, action.input_root_digest, root)
        workdir = os.path.join(root, command.working_directory)
        for rel in (
            list(command.output_files)
            + list(command.output_directories)
            + list(command.output_paths)
        ):
            os.makedirs(os.path.dirname(os.path.join(workdir, rel)), exist_ok=True)
        return workdir

    def _run_command(self, action, command, workdir, out_path, err_path):
        """Runs the command with exactly its environment, under the action's timeout."""
        env = {v.name: v.value for v in command.environment_variables}
        timeout = (
            action.timeout.seconds + action.timeout.nanos / 1e9
            if action.HasField("timeout")
            else None
        )
        args = list(command.arguments)
        if args and "/" in args[0] and not os.path.isabs(args[0]):
            args[0] = os.path.join(workdir, args[0])  # Relative to the working directory.
        LOG.info("lease %s: running %s", self.lease.id, " ".join(command.arguments)[:200])
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    args,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as e:
                err.write(f"worker {self.worker.bot_id}: cannot run {args[0]}: {e}\n".encode())
                self.result.exit_code = 127
                self.proc = None
                return
            if self.cancelled:
                _kill_group(self.proc)
            try:
                self.result.exit_code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc)
                self.result.exit_code = self.proc.wait()
                self.status = code_pb2.DEADLINE_EXCEEDED
                self.message = f"action timed out after {timeout:.0f} s on {self.worker.bot_id}"
            # Leftovers of the group (daemonized children) must not outlive the action.
            _kill_group(self.proc)

    def _upload(self, command, workdir, out_path, err_path):
        """Uploads stdout, stderr and the declared outputs into the ActionResult."""
        blobs = {}
        self.result.stdout_digest.CopyFrom(file_blob(out_path, blobs))
        self.result.stderr_digest.CopyFrom(file_blob(err_path, blobs))
        self.worker.cas.write(blobs)
        collect_outputs(self.worker.cas, command, workdir, self.result)


def platform_text(platform):
    """`{key=value, ...}` of a Platform, for logs and messages."""
    return "{" + ", ".join(f"{p.name}={p.value}" for p in platform.properties) + "}"


def _kill_group(proc):
    """Kills the action's whole session: its process group and any group a child made
    (test-setup.sh runs the test under `set -m`), so nothing outlives the action."""
    victims = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == proc.pid:  # Session id; the action is its session leader.
            victims.append(int(entry))
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _now(ts):
    ts.GetCurrentTime()
