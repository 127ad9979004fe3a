"""Known torch bugs: the `known_bug` of the harness's case records, read into results."""

import re
from typing import Dict

from tools.report.collected import TestResult
from tools.report.status import FAIL, KNOWN_BUG, KNOWN_FAILED, KNOWN_PASSED, PASS, SKIPPED


def known_bugs_phrase(n: int) -> str:
    """'1 known torch bug' / '3 known torch bugs'."""
    return "%d known torch bug%s" % (n, "" if n == 1 else "s")


def bug_scope(bug: Dict[str, str]) -> str:
    """Where a recorded bug applies, in words (testing/known_failures.py's record):
    ``"affects torch >=2.10,<2.14.1, fixed by pytorch#187376; shows with world size >=2"``.
    """
    text = "affects torch " + bug.get("affected", "?")
    if bug.get("fixed_by"):
        text += ", fixed by " + bug["fixed_by"]
    if bug.get("conditions"):
        text += "; shows with " + bug["conditions"]
    return text


def describe_known_bug(bug: Dict[str, str]) -> str:
    """One line naming the bug, as the harness's TorchBug.describe writes it."""
    return "known torch bug %s: %s (%s)" % (
        bug.get("issue", "?"),
        bug.get("summary", ""),
        bug_scope(bug),
    )


def apply_known_failure(r: TestResult, bug: Dict[str, str]) -> None:
    """Sets a result's status from its known-failure record.

    The harness reports a known bug that reproduced as an expected failure, which
    absl's XML writes as a passing case and pytest's as a skipped one: the record
    is what says it failed. Such a case, and one that failed where the bug was not
    expected (outside its range or conditions, or --known_failures=strict),
    becomes KNOWN_BUG. A case that passed where the bug applies is a FAIL: the bug
    did not reproduce, so either the test lost its power to catch it or this
    build has a fix. A pass anywhere else stays a pass.
    """
    r.known_bug = dict(bug)
    outcome = bug.get("outcome", "")
    if outcome in KNOWN_FAILED:
        if r.status in (PASS, SKIPPED, FAIL, KNOWN_BUG):
            r.status = KNOWN_BUG
            if r.message.startswith("expected failure"):
                r.message = ""  # the generic xfail line; the record says more
            if not r.message.startswith("known torch bug"):
                r.message = describe_known_bug(bug) + ("\n" + r.message if r.message else "")
            # The failure itself, if the harness recorded it (an expected failure
            # leaves no message in the XML).
            if bug.get("message") and bug["message"] not in r.message:
                r.message += "\n" + bug["message"]
    elif outcome == KNOWN_PASSED and bug.get("expected") == "yes":
        junit = r.message
        r.status = FAIL
        r.message = (
            "known bug did not reproduce: %s passed on torch %s, where %s applies "
            "(%s). Either the test no longer catches the bug, or this build has a "
            "fix (then update affected). The bug: %s"
            % (
                r.test_id or r.raw_name,
                bug.get("torch_version") or bug.get("torch", "?"),
                bug.get("issue", "?"),
                bug_scope(bug),
                bug.get("summary", ""),
            )
        )
        if junit and junit not in r.text:
            r.text = junit + ("\n" + r.text if r.text else "")


_ISSUE_RE = re.compile(r"^(?:(?P<repo>[\w.-]+/[\w.-]+)|(?P<short>pytorch))#(?P<n>\d+)$")


def issue_url(issue: str) -> str:
    """A link for `pytorch#123`, `owner/repo#123` or a URL; "" otherwise."""
    issue = (issue or "").strip()
    if re.match(r"^https?://\S+$", issue):
        return issue
    m = _ISSUE_RE.match(issue)
    if not m:
        return ""
    repo = m.group("repo") or "pytorch/pytorch"
    return "https://github.com/%s/issues/%s" % (repo, m.group("n"))
