#!/usr/bin/env python3
"""A small REAPI worker ("bot") for a local BuildGrid: tools/remote/worker.py.

It is a local stand-in for buildbox-worker or a hosted fleet's executors, for running
the suite's tests through remote execution on one host. It speaks BuildGrid's Bots API
(google.devtools.remoteworkers.v1test2: CreateBotSession, then UpdateBotSession in a
loop) with the gRPC stubs that ship inside the buildgrid package, so it needs nothing
but the BuildGrid environment that tools/remote/start builds.

For each lease it
  1. fetches the Action and Command from CAS;
  2. stages the input root in a fresh directory (files, executables, symlinks, empty
     directories);
  3. runs the command with exactly the environment the client sent (nothing inherited),
     in the command's working directory, in its own process group, with the action's
     timeout;
  4. uploads stdout, stderr and every declared output (files, and directories as Tree
     messages: test.xml, test.outputs/, ...), and reports an ActionResult.

The bot id is stable (`<hostname>-<name>`), so a restarted worker takes over its old
session and the server requeues whatever the old one held. On SIGTERM/SIGINT it stops a
running action, hands its lease back as UNAVAILABLE (the server retries it elsewhere)
and reports BOT_TERMINATING, so the scheduler never waits out a dead session.

The worker advertises its platform on its primary device: `device=<cpu|cuda|hpu|xpu>`
and, with --gpus N, `gpus=1..N` and `Pool=<device>-1..N` (a worker with 4 GPUs can take
a 2-rank test), plus any --require-property KEY=VALUE, which it also demands of every
action (a stand-in for a hosted fleet whose workers need, say, a container image).
"""

import argparse
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid

import grpc
from buildgrid._protos.google.rpc import code_pb2

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2
from buildgrid._protos.google.bytestream import bytestream_pb2_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import worker_pb2

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import device_table  # noqa: E402  tools/device_table.py: testing/devices.py without torch

LOG = logging.getLogger("worker")

# Blobs up to this size go through Batch{Read,Update}Blobs; larger ones through ByteStream.
BATCH_LIMIT = 1 << 20
CHUNK = 1 << 20
# How long one UpdateBotSession may wait on the server for work (long poll).
POLL_SECONDS = 30
# How often a busy worker tells the server it is alive.
HEARTBEAT_SECONDS = 5


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def digest_of(data):
    """The REAPI digest (SHA-256 and size) of `data`."""
    return re_pb2.Digest(hash=_sha256(data), size_bytes=len(data))


class Cas:
    """Minimal CAS client: batched reads and writes, ByteStream for large blobs."""

    def __init__(self, channel, instance):
        self.instance = instance
        self.cas = re_grpc.ContentAddressableStorageStub(channel)
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)

    def _resource(self, digest, upload=False):
        parts = [self.instance] if self.instance else []
        if upload:
            parts += ["uploads", str(uuid.uuid4())]
        parts += ["blobs", digest.hash, str(digest.size_bytes)]
        return "/".join(parts)

    def read(self, digests):
        """Returns {hash: bytes} for the given digests."""
        out = {}
        small, batch, size = [], [], 0
        for d in {d.hash: d for d in digests}.values():
            if d.size_bytes == 0:
                out[d.hash] = b""
            elif d.size_bytes > BATCH_LIMIT:
                req = bytestream_pb2.ReadRequest(resource_name=self._resource(d))
                out[d.hash] = b"".join(r.data for r in self.bytestream.Read(req))
            else:
                small.append(d)
        for d in small:
            if batch and size + d.size_bytes > BATCH_LIMIT:
                self._read_batch(batch, out)
                batch, size = [], 0
            batch.append(d)
            size += d.size_bytes
        if batch:
            self._read_batch(batch, out)
        return out

    def _read_batch(self, digests, out):
        resp = self.cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=digests)
        )
        for r in resp.responses:
            if r.status.code != code_pb2.OK:
                raise RuntimeError(f"CAS read {r.digest.hash}: {r.status.message or r.status.code}")
            out[r.digest.hash] = r.data

    def write(self, blobs):
        """Uploads {hash: (digest, bytes)} that the server lacks."""
        if not blobs:
            return
        missing = self.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(
                instance_name=self.instance, blob_digests=[d for d, _ in blobs.values()]
            )
        ).missing_blob_digests
        batch, size = [], 0
        for d in missing:
            data = blobs[d.hash][1]
            if d.size_bytes > BATCH_LIMIT:
                self._write_stream(d, data)
                continue
            if batch and size + d.size_bytes > BATCH_LIMIT:
                self._write_batch(batch)
                batch, size = [], 0
            batch.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=data))
            size += d.size_bytes
        if batch:
            self._write_batch(batch)

    def _write_batch(self, requests):
        resp = self.cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance, requests=requests)
        )
        for r in resp.responses:
            if r.status.code != code_pb2.OK:
                raise RuntimeError(
                    f"CAS write {r.digest.hash}: {r.status.message or r.status.code}"
                )

    def _write_stream(self, digest, data):
        name = self._resource(digest, upload=True)

        def requests():
            offset = 0
            while True:
                chunk = data[offset : offset + CHUNK]
                last = offset + len(chunk) >= len(data)
                yield bytestream_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "",
                    write_offset=offset,
                    finish_write=last,
                    data=chunk,
                )
                offset += len(chunk)
                if last:
                    return

        self.bytestream.Write(requests())

    def get_tree(self, root):
        """Returns {hash: Directory} for every directory under root."""
        dirs = {}
        req = re_pb2.GetTreeRequest(instance_name=self.instance, root_digest=root)
        for resp in self.cas.GetTree(req):
            for d in resp.directories:
                dirs[_sha256(d.SerializeToString())] = d
        if root.hash not in dirs:  # Re-serialization may differ; fetch the root itself.
            d = re_pb2.Directory()
            d.ParseFromString(self.read([root])[root.hash])
            dirs[root.hash] = d
        return dirs


def stage(cas, root_digest, path):
    """Writes the input root into path (which must not exist)."""
    dirs = cas.get_tree(root_digest)
    files = []  # (path, digest, executable)

    def walk(directory, where):
        os.makedirs(where, exist_ok=True)
        for f in directory.files:
            files.append((os.path.join(where, f.name), f.digest, f.is_executable))
        for s in directory.symlinks:
            os.symlink(s.target, os.path.join(where, s.name))
        for sub in directory.directories:
            child = dirs.get(sub.digest.hash)
            if child is None:
                child = re_pb2.Directory()
                child.ParseFromString(cas.read([sub.digest])[sub.digest.hash])
            walk(child, os.path.join(where, sub.name))

    walk(dirs[root_digest.hash], path)
    blobs = cas.read([d for _, d, _ in files])
    for file_path, d, executable in files:
        with open(file_path, "wb") as fh:
            fh.write(blobs[d.hash])
        os.chmod(file_path, 0o755 if executable else 0o644)


def _tree_of(path, blobs):
    """Builds a Tree for directory path; adds every blob it needs to blobs."""
    children = []

    def directory_of(where):
        d = re_pb2.Directory()
        for name in sorted(os.listdir(where)):
            full = os.path.join(where, name)
            if os.path.islink(full):
                d.symlinks.add(name=name, target=os.readlink(full))
            elif os.path.isdir(full):
                sub = directory_of(full)
                data = sub.SerializeToString()
                children.append(sub)
                d.directories.add(name=name, digest=digest_of(data))
            elif os.path.isfile(full):
                d.files.add(
                    name=name,
                    digest=_file_blob(full, blobs),
                    is_executable=os.access(full, os.X_OK),
                )
        return d

    root = directory_of(path)
    tree = re_pb2.Tree(root=root, children=children)
    data = tree.SerializeToString()
    dg = digest_of(data)
    blobs[dg.hash] = (dg, data)
    return dg


def _file_blob(path, blobs):
    """Reads a file into ``blobs`` (hash -> (digest, data)); returns its digest."""
    with open(path, "rb") as fh:
        data = fh.read()
    dg = digest_of(data)
    blobs[dg.hash] = (dg, data)
    return dg


def collect_outputs(cas, command, workdir, result):
    """Fills result with the declared outputs found under workdir and uploads them."""
    blobs = {}
    files = list(command.output_files)
    dirs = list(command.output_directories)
    for p in command.output_paths:  # REAPI 2.1: kind decided by what exists.
        (dirs if os.path.isdir(os.path.join(workdir, p)) else files).append(p)
    for rel in files:
        full = os.path.join(workdir, rel)
        if os.path.islink(full):
            result.output_file_symlinks.add(path=rel, target=os.readlink(full))
        elif os.path.isfile(full):
            result.output_files.add(
                path=rel, digest=_file_blob(full, blobs), is_executable=os.access(full, os.X_OK)
            )
    for rel in dirs:
        full = os.path.join(workdir, rel)
        if os.path.isdir(full) and not os.path.islink(full):
            result.output_directories.add(path=rel, tree_digest=_tree_of(full, blobs))
    cas.write(blobs)


class _Stopped(Exception):
    """The worker is stopping; a pending call was abandoned."""


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
                f"action's platform has {_platform_text(command.platform)}"
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
        LOG.info("lease %s: platform %s", self.lease.id, _platform_text(command.platform))
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
        self.result.stdout_digest.CopyFrom(_file_blob(out_path, blobs))
        self.result.stderr_digest.CopyFrom(_file_blob(err_path, blobs))
        self.worker.cas.write(blobs)
        collect_outputs(self.worker.cas, command, workdir, self.result)


def _platform_text(platform):
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


class Worker:
    """A REAPI bot: holds a bot session and executes the leases it is given."""

    def __init__(self, args):
        self.args = args
        self.bot_id = f"{socket.gethostname()}-{args.name}"
        self.work_dir = os.path.abspath(args.work_dir)
        target = args.server
        for prefix in ("grpc://", "http://"):
            if target.startswith(prefix):
                target = target[len(prefix) :]
        self.channel = grpc.insecure_channel(target)
        self.bots = bots_pb2_grpc.BotsStub(self.channel)
        self.cas = Cas(self.channel, args.instance)
        self.stopping = threading.Event()
        self.jobs = {}  # lease id -> Job

    def properties(self):
        """The platform properties this worker advertises, as (key, value) pairs."""
        props = [("device", self.args.device)]
        if self.args.gpus:
            props += [("gpus", str(n)) for n in range(1, self.args.gpus + 1)]
            # fsdp_test's Pool=<device>-<ranks>, for each size this worker can take.
            props += [("Pool", f"{self.args.device}-{n}") for n in range(1, self.args.gpus + 1)]
        props += [tuple(p.split("=", 1)) for p in self.args.require_property]
        return props

    def missing_requirements(self, platform):
        """The --require-property KEY=VALUE pairs that `platform` lacks."""
        have = {(p.name, p.value) for p in platform.properties}
        return [p for p in self.args.require_property if tuple(p.split("=", 1)) not in have]

    def _session(self):
        device = worker_pb2.Device(handle=self.bot_id)
        for key, value in self.properties():
            device.properties.add(key=key, value=value)
        worker = worker_pb2.Worker(devices=[device])
        worker.configs.add(key="capacity", value="1")
        return bots_pb2.BotSession(bot_id=self.bot_id, status=bots_pb2.OK, worker=worker)

    def run(self):
        """Creates and updates the bot session, running leases until stopped."""
        os.makedirs(self.work_dir, exist_ok=True)
        session = None
        while not self.stopping.is_set():
            try:
                if session is None:
                    session = self._call(
                        self.bots.CreateBotSession,
                        bots_pb2.CreateBotSessionRequest(
                            parent=self.args.instance, bot_session=self._session()
                        ),
                        POLL_SECONDS,
                    )
                    LOG.info(
                        "bot %s: session %s (%s)", self.bot_id, session.name, self.properties()
                    )
                else:
                    session = self._update(session, timeout=POLL_SECONDS)
                self._sync(session)
                if self.jobs:
                    # Busy: wait for the job (or the heartbeat interval), then report.
                    next(iter(self.jobs.values())).done.wait(HEARTBEAT_SECONDS)
            except _Stopped:
                break
            except grpc.RpcError as e:
                if self.stopping.is_set():
                    break
                code = e.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                LOG.warning("bot %s: %s: %s; retrying", self.bot_id, code, e.details())
                if code in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    for job in self.jobs.values():
                        job.cancel()
                    self.jobs.clear()
                    session = None  # Start a new session under the same bot id.
                self.stopping.wait(1)
        self._terminate(session)

    def _call(self, method, request, timeout, interruptible=True):
        """Calls method; a long poll is abandoned as soon as the worker is stopping."""
        future = method.future(request, timeout=timeout)
        while True:
            try:
                return future.result(timeout=0.2)
            except grpc.FutureTimeoutError:
                if interruptible and self.stopping.is_set():
                    future.cancel()
            except grpc.FutureCancelledError:
                raise _Stopped() from None

    def _update(self, session, timeout):
        # Report finished jobs; keep running ones ACTIVE.
        del session.leases[:]
        for lease_id, job in list(self.jobs.items()):
            lease = bots_pb2.Lease()
            lease.CopyFrom(job.lease)
            if job.done.is_set():
                lease.state = bots_pb2.COMPLETED
                lease.status.code = job.status
                lease.status.message = job.message
                lease.result.Pack(job.result)
            else:
                lease.state = bots_pb2.ACTIVE
            session.leases.append(lease)
        reported = {done.id for done in session.leases if done.state == bots_pb2.COMPLETED}
        session = self._call(
            self.bots.UpdateBotSession,
            bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session),
            timeout,
            interruptible=not reported and session.status == bots_pb2.OK,
        )
        for lease_id in reported:
            self.jobs.pop(lease_id, None)
        return session

    def _sync(self, session):
        seen = set()
        for lease in session.leases:
            seen.add(lease.id)
            if lease.state == bots_pb2.ACTIVE and lease.id not in self.jobs:
                job = Job(self, lease)
                self.jobs[lease.id] = job
                job.start()
            elif lease.state == bots_pb2.CANCELLED and lease.id in self.jobs:
                self.jobs.pop(lease.id).cancel()
        for lease_id in list(self.jobs):
            if lease_id not in seen and not self.jobs[lease_id].done.is_set():
                LOG.info("lease %s withdrawn by the server; stopping it", lease_id)
                self.jobs.pop(lease_id).cancel()

    def _terminate(self, session):
        """Hands running leases back and tells the server this bot is going away."""
        if session is None:
            return
        for job in self.jobs.values():
            if not job.done.is_set():
                job.cancel()
                job.done.wait(10)
                job.status = code_pb2.UNAVAILABLE  # Retryable: the server requeues it.
                job.message = f"worker {self.bot_id} terminated"
                job.result = re_pb2.ActionResult()
            job.done.set()
        session.status = bots_pb2.BOT_TERMINATING
        try:
            session = self._update(session, timeout=5)
            # Leases assigned while we were stopping: hand them straight back.
            for lease in session.leases:
                if lease.state == bots_pb2.ACTIVE and lease.id not in self.jobs:
                    job = Job(self, lease)
                    job.status = code_pb2.UNAVAILABLE
                    job.message = f"worker {self.bot_id} terminated"
                    job.done.set()
                    self.jobs[lease.id] = job
            if self.jobs:
                self._update(session, timeout=5)
            LOG.info("bot %s: reported termination", self.bot_id)
        except grpc.RpcError as e:
            LOG.warning("bot %s: could not report termination: %s", self.bot_id, e.code())


def main(argv=None):
    """Parses the command line and runs one worker until it is stopped."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="grpc://HOST:PORT of the Bots service")
    p.add_argument("--instance", default="", help="REAPI instance name (default: '')")
    p.add_argument("--name", default="worker-1", help="stable name; bot id is <hostname>-<name>")
    p.add_argument("--device", default="cpu", choices=list(device_table.load().DEVICES))
    p.add_argument(
        "--gpus",
        type=int,
        default=0,
        help="accelerators on this worker (advertises gpus=1..N, Pool=<device>-1..N)",
    )
    p.add_argument(
        "--require-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="advertise KEY=VALUE and refuse actions whose platform lacks it "
        "(like a fleet that needs an image or a pool named)",
    )
    p.add_argument("--work-dir", required=True, help="where input roots are staged")
    args = p.parse_args(argv)
    if args.device != "cpu" and args.gpus < 1:
        p.error(f"--device {args.device} needs --gpus N (N >= 1)")
    for prop in args.require_property:
        if "=" not in prop:
            p.error(f"--require-property {prop}: expected KEY=VALUE")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s"
    )
    worker = Worker(args)

    def on_signal(signum, _frame):
        LOG.info("bot %s: signal %d, stopping", worker.bot_id, signum)
        worker.stopping.set()
        for job in list(worker.jobs.values()):
            job.cancel()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
