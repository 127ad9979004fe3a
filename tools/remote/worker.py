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
import logging
import os
import signal
import socket
import sys
import threading

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
    worker_pb2,
)
from buildgrid._protos.google.rpc import code_pb2

if __package__ in (None, ""):
    # Run as a file: the modules beside it are the package tools.remote, so the checkout
    # root goes first on the path instead of this directory.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The device table's loader needs no torch.
from tools import device_table  # noqa: E402 (path set above)
from tools.remote.action_job import Job  # noqa: E402
from tools.remote.cas_client import Cas  # noqa: E402

LOG = logging.getLogger("worker")

# How long one UpdateBotSession may wait on the server for work (long poll).
POLL_SECONDS = 30
# How often a busy worker tells the server it is alive.
HEARTBEAT_SECONDS = 5


class _Stopped(Exception):
    """The worker is stopping; a pending call was abandoned."""


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
