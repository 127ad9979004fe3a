"""Where a local remote-execution stack keeps its state, and how its tools report.

Everything tools/remote/start starts is recorded in STATE_FILE, so `stop` ends exactly
those processes; one stack per state directory (FSDP_REMOTE_STATE_DIR, which the
integration test sets). Errors are one line, without a traceback (Error, say).
"""

import json
import os
import sys

ME = "tools/remote"
CACHE = os.environ.get("FSDP_CACHE_DIR") or os.path.expanduser("~/.cache/fsdp-conformance")
# One stack per state directory (the integration test uses its own).
STATE_DIR = os.path.abspath(
    os.environ.get("FSDP_REMOTE_STATE_DIR") or os.path.join(CACHE, "remote")
)
STATE_FILE = os.path.join(STATE_DIR, "state.json")


class Error(Exception):
    """A failure to report in one line, without a traceback."""


def say(msg):
    """Prints a progress or error line on stderr."""
    print(f"{ME}: {msg}", file=sys.stderr, flush=True)


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


def record_process(state, role, pid):
    """Adds a started process to the state and saves it at once (a failed start is
    then still stoppable)."""
    state["processes"].append({"role": role, "pid": pid})
    save_state(state)
