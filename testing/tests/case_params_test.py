"""testing.case_params reads the parameters absl's parameterized binds to a method.

Passes when, for tuple-, dict- and repr-named parameterized methods, parameters()
returns each argument by its name (non-JSON values as their repr), returns {} for a
plain method, and record() writes every recorded test to test_params.json keyed by
``<Class>.<method>``.
"""

import json
import os

from absl.testing import absltest
from absl.testing import parameterized

from testing import case_params


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

        def test_plain(self):
            pass

    return _Sample


class CaseParamsTest(absltest.TestCase):
    sample = _sample_class()

    def _params(self, method_name):
        return case_params.parameters(self.sample(method_name))

    def test_tuple_named_parameters(self):
        self.assertEqual(
            self._params("test_tuple_cases_fsdp1"),
            {"api": "fsdp1", "options": "{'use_orig_params': True}"},
        )
        self.assertEqual(self._params("test_tuple_cases_fsdp2"), {"api": "fsdp2", "options": "{}"})

    def test_dict_named_parameters(self):
        self.assertEqual(self._params("test_dict_cases_bf16_fsdp2"), {"api": "fsdp2", "bits": 16})

    def test_repr_named_parameters(self):
        self.assertEqual(self._params("test_repr_cases0"), {"api": "fsdp1", "steps": 3})

    def test_plain_method_has_none(self):
        self.assertEqual(self._params("test_plain"), {})

    def test_record_writes_every_test_by_class_and_method(self):
        out = self.create_tempdir().full_path
        case_params.record(self.sample("test_tuple_cases_fsdp1"), out)
        case_params.record(self.sample("test_plain"), out)
        with open(os.path.join(out, case_params.FILE_NAME)) as f:
            written = json.load(f)
        self.assertEqual(
            written.get("_Sample.test_tuple_cases_fsdp1", {}).get("api"),
            "fsdp1",
            f"test_params.json: {written}",
        )
        self.assertEqual(written.get("_Sample.test_plain"), {}, f"test_params.json: {written}")


if __name__ == "__main__":
    absltest.main()
