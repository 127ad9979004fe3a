"""testing.case_params: the one record per test case that tools/report reads (cases.json).

Passes when, for tuple-, dict- and repr-named parameterized methods, parameters()
returns each argument by its name; when each case's record has the report's row
(the method without its API token; an unnamed case's parameters instead of absl's
index) and its API (the ``api`` parameter, else the name's token, else the file's
``fsdp_test`` api, else none); and when
record() keeps one entry per case and world size, later facts (a known bug, a not-run
reason) updating it rather than adding a second.
"""

import json
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from testing import case_params
from testing import known_failures
from testing import not_run


def _sample_class():
    """A parameterized class to read parameters from, defined here so no runner collects it."""

    class _Sample(parameterized.TestCase):
        """Methods to read parameters from; never run."""

        @parameterized.named_parameters(
            ("fsdp1", "fsdp1", {"use_orig_params": True}), ("fsdp2", "fsdp2", {})
        )
        def test_tuple_cases(self, api, options):
            del api, options

        @parameterized.named_parameters(dict(testcase_name="bf16_fsdp2", api="fsdp2", bits=16))
        def test_dict_cases(self, api, bits):
            del api, bits

        @parameterized.parameters(("fsdp1", 3))
        def test_repr_cases(self, api, steps):
            del api, steps

        @parameterized.named_parameters(("one", 1), ("two", 2))
        def test_fixed_api_fsdp2(self, n):
            del n

        def test_plain(self):
            pass

        def test_fsdp1_and_fsdp2_agree(self):
            pass

    return _Sample


class CaseParamsTest(absltest.TestCase):
    sample = _sample_class()

    def _params(self, method_name):
        return case_params.parameters(self.sample(method_name))

    def _describe(self, method_name, world_size=2):
        return case_params.describe(self.sample, method_name, device="cpu", world_size=world_size)

    def test_tuple_named_parameters(self):
        self.assertEqual(
            self._params("test_tuple_cases_fsdp1"),
            {"api": "fsdp1", "options": {"use_orig_params": True}},
        )
        self.assertEqual(self._params("test_tuple_cases_fsdp2"), {"api": "fsdp2", "options": {}})

    def test_dict_named_parameters(self):
        self.assertEqual(self._params("test_dict_cases_bf16_fsdp2"), {"api": "fsdp2", "bits": 16})

    def test_repr_named_parameters(self):
        self.assertEqual(self._params("test_repr_cases0"), {"api": "fsdp1", "steps": 3})

    def test_plain_method_has_none(self):
        self.assertEqual(self._params("test_plain"), {})

    def test_row_and_api_of_each_kind_of_method(self):
        rows = {
            # named: the API token leaves the row, so a method's API cases share it
            "test_tuple_cases_fsdp1": ("test_tuple_cases", "fsdp1"),
            "test_dict_cases_bf16_fsdp2": ("test_dict_cases_bf16", "fsdp2"),
            # unnamed: absl's index says nothing, the non-API parameters do
            "test_repr_cases0": ("test_repr_cases (steps=3)", "fsdp1"),
            # the API fixed in the body, named in the method
            "test_fixed_api_fsdp2_one": ("test_fixed_api_one", "fsdp2"),
            "test_plain": ("test_plain", None),
            # two API tokens: the case tests no one API
            "test_fsdp1_and_fsdp2_agree": ("test_fsdp1_and_fsdp2_agree", None),
        }
        for method, want in rows.items():
            record = self._describe(method)
            self.assertEqual((record["name"], record["api"]), want, method)

    def test_file_api_for_methods_that_do_not_say(self):
        # What the fsdp_test macro passes for a target declared with api = "fsdp2".
        with mock.patch.dict(os.environ, {"FSDP_TEST_APPLICABILITY": '{"api": "fsdp2"}'}):
            self.assertEqual(self._describe("test_plain")["api"], "fsdp2")
            self.assertEqual(self._describe("test_tuple_cases_fsdp1")["api"], "fsdp1")

    def test_record_fields(self):
        record = self._describe("test_tuple_cases_fsdp1", world_size=4)
        self.assertEqual(record["test_id"], "_Sample.test_tuple_cases_fsdp1")
        self.assertEqual(record["classname"], f"{__name__}.{self.sample.__qualname__}")
        self.assertEqual(record["file"], case_params.test_file(self.sample))
        self.assertTrue(record["file"].endswith("case_params_test.py"), record["file"])
        self.assertEqual((record["device"], record["world_size"]), ("cpu", 4))
        # Written as JSON: a dict parameter as its repr.
        self.assertEqual(record["params"]["options"], "{'use_orig_params': True}")
        self.assertEqual((record["known_bug"], record["not_run"]), (None, None))

    def test_one_record_per_case_and_world_size(self):
        out = self.create_tempdir().full_path
        bug = known_failures.TorchBug("example#1", "s", affected=">=2.0")
        case = known_failures.Case(world_size=2, device="cpu", backend="gloo")
        started = self._describe("test_tuple_cases_fsdp1")
        case_params.record(started, out)
        known_failures.record(started, bug, "failed", out, case=case, expected=False)
        not_run.record(
            self.sample,
            not_run.NotRun("x._Sample", "test_plain", "f.py", "cpu", 3, "valid at 2, not 3: r"),
            out,
        )
        with open(os.path.join(out, case_params.FILE_NAME)) as f:
            written = {(c["test_id"], c["world_size"]): c for c in json.load(f)["cases"]}
        fsdp1 = written[("_Sample.test_tuple_cases_fsdp1", 2)]
        self.assertEqual(fsdp1["known_bug"]["issue"], "example#1")
        self.assertEqual(fsdp1["known_bug"]["outcome"], "failed")
        self.assertEqual(fsdp1["known_bug"]["not_expected_because"], "strict mode")
        self.assertEqual(written[("_Sample.test_plain", 3)]["not_run"], "valid at 2, not 3: r")
        self.assertEqual(sum(1 for k in written if k[0] == "_Sample.test_tuple_cases_fsdp1"), 1)


if __name__ == "__main__":
    absltest.main()
