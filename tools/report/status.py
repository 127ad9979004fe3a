"""The statuses of results and cells; each value is the label people see."""

PASS = "pass"
FAIL = "fail"
# A failure caused by a known torch bug (testing/known_failures.py): a failure of
# conformance like FAIL, shown apart so people see which failures are explained.
KNOWN_BUG = "known bug"
FLAKY = "flaky"
SKIPPED = "skipped"
DISABLED = "disabled"
NOT_RUN = "not run"
NO_RESULT = "no result"
MALFORMED = "malformed"
NA = "n/a"

# Statuses that get a detail section (message, traceback, rank logs).
NEEDS_DETAIL = (FAIL, KNOWN_BUG, FLAKY, NO_RESULT, MALFORMED)

# Outcomes the harness records as a case's known_bug (cases.json).
KNOWN_FAILED = ("failed as expected", "failed")
KNOWN_PASSED = "passed"
