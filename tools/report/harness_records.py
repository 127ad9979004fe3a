"""The harness's environment.json beside a test's results (torch, devices)."""

import json
from typing import List, Optional

from tools.report.collected import Problem
from tools.report.files import Outputs


def read_environment(outputs: Outputs, source: str, problems: List[Problem]) -> Optional[dict]:
    """The run's environment.json as a dict, or None; parse errors go to `problems`."""
    text = outputs.read("environment.json")
    if text is None:
        for rel in outputs.files:
            if rel.endswith("/environment.json"):
                text = outputs.read(rel)
                break
    if text is None:
        return None
    return parse_environment(text, source, problems)


def parse_environment(text: str, source: str, problems: List[Problem]) -> Optional[dict]:
    """An environment.json's text as a dict, or None; parse errors go to `problems`."""
    try:
        env = json.loads(text)
        if not isinstance(env, dict):
            raise ValueError("not a JSON object")
        return env
    except ValueError as e:
        problems.append(Problem(source, "bad environment.json: %s" % e))
        return None
