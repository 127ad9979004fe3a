"""Tests of tools/device_shortfall.py: which selected targets a host cannot run.

Pass criterion: the words after `test` split into target patterns and options as Bazel
reads them (`--config cuda` takes its value, `--` ends the options); the query
expression adds and subtracts patterns in order; `--test_tag_filters` keeps a target
with one wanted tag and no unwanted one; from query XML (the shape `bazel query
--output=xml` prints), `manual` targets drop out unless named; and the note counts the
targets whose ws<N> exceeds the host's devices and names the flag that selects the rest
(`-requires-multi-device` on one device, `-ws<N>` above that), or says nothing fits.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import device_shortfall as ds  # noqa: E402

# Five test rules as `bazel query --output=xml` prints them (other attributes dropped).
XML = """<?xml version="1.1" encoding="UTF-8" standalone="no"?>
<query version="2">
  <rule class="py_test" location="/w/fsdp/BUILD.bazel:3:10" name="//fsdp:a_test_cuda">
    <string name="name" value="a_test_cuda"/>
    <list name="tags"><string value="gpu"/><string value="ws1"/></list>
  </rule>
  <rule class="py_test" location="/w/fsdp/BUILD.bazel:3:10" name="//fsdp:b_test_cuda">
    <list name="tags">
      <string value="gpu"/><string value="requires-multi-device"/><string value="ws2"/>
    </list>
  </rule>
  <rule class="py_test" location="/w/fsdp/BUILD.bazel:3:10" name="//fsdp:c_test_cuda_ws4">
    <list name="tags">
      <string value="gpu"/><string value="requires-multi-device"/><string value="ws4"/>
    </list>
  </rule>
  <rule class="py_test" location="/w/fsdp/BUILD.bazel:3:10" name="//fsdp:d_test_cuda">
    <list name="tags">
      <string value="gpu"/><string value="manual"/><string value="ws2"/>
    </list>
  </rule>
  <rule class="py_test" location="/w/fsdp/BUILD.bazel:3:10" name="//fsdp:e_test_cpu">
    <list name="tags"><string value="cpu"/><string value="ws2"/></list>
  </rule>
</query>
"""


class ParseTest(unittest.TestCase):
    """Command-line words to patterns, tag filters and shared options."""

    def test_values_of_options_are_not_patterns(self):
        args = ds.parse_args(
            ["//fsdp/...", "--config", "cuda", "--keep_going", "--repo_env", "FSDP_PYTHON=/p"]
        )
        self.assertEqual(args.patterns, ["//fsdp/..."])
        self.assertEqual(args.shared, ["--repo_env=FSDP_PYTHON=/p"])
        self.assertIsNone(args.tag_filters)

    def test_last_tag_filter_wins_and_double_dash_ends_options(self):
        args = ds.parse_args(
            ["--test_tag_filters=cpu", "--test_tag_filters", "gpu,-ws4", "--", "//a/...", "-//a:x"]
        )
        self.assertEqual(args.tag_filters, "gpu,-ws4")
        self.assertEqual(args.patterns, ["//a/...", "-//a:x"])

    def test_query_expression_adds_and_subtracts_in_order(self):
        self.assertEqual(
            ds.query_expression(["//a/...", "-//a:x", "//b:y"]),
            'tests("//a/..." - "//a:x" + "//b:y")',
        )
        self.assertIsNone(ds.query_expression(["-//a:x"]))
        self.assertIsNone(ds.query_expression([]))


class SelectionTest(unittest.TestCase):
    """Tag filters and manual targets, as `bazel test` applies them."""

    def test_tag_filter_semantics(self):
        self.assertTrue(ds.tag_filter_matches(["gpu", "ws2"], "gpu"))
        self.assertFalse(ds.tag_filter_matches(["cpu", "ws2"], "gpu"))
        self.assertFalse(ds.tag_filter_matches(["gpu", "ws4"], "gpu,-ws4"))
        self.assertTrue(ds.tag_filter_matches(["gpu", "ws2"], "-ws4"))
        self.assertTrue(ds.tag_filter_matches(["x"], ""))

    def test_manual_targets_only_when_named(self):
        wild = [label for label, _ in ds.selected_targets(XML, ["//fsdp/..."], "gpu")]
        self.assertEqual(
            wild, ["//fsdp:a_test_cuda", "//fsdp:b_test_cuda", "//fsdp:c_test_cuda_ws4"]
        )
        named = [label for label, _ in ds.selected_targets(XML, ["//fsdp:d_test_cuda"], "gpu")]
        self.assertIn("//fsdp:d_test_cuda", named)


class NoteTest(unittest.TestCase):
    """The line: count of targets that cannot run, and the flag for the rest."""

    def _note(self, count, tag_filters="gpu"):
        targets = ds.selected_targets(XML, ["//fsdp/..."], tag_filters)
        return ds.note("cuda", count, tag_filters, targets)

    def test_one_device_excludes_multi_device_targets(self):
        self.assertEqual(
            self._note(1),
            "tools/bazel: 2 of 3 selected cuda targets need more devices than the 1 this "
            "host has and will fail; to run only the rest: "
            "--test_tag_filters=gpu,-requires-multi-device",
        )

    def test_two_devices_exclude_larger_world_sizes(self):
        self.assertTrue(self._note(2).startswith("tools/bazel: 1 of 3 selected cuda targets"))
        self.assertTrue(self._note(2).endswith("--test_tag_filters=gpu,-ws4"), self._note(2))

    def test_enough_devices_say_nothing(self):
        self.assertIsNone(self._note(4))
        self.assertIsNone(self._note(2, tag_filters="gpu,-ws4"))

    def test_nothing_fits(self):
        self.assertTrue(self._note(0).endswith("none of them can run here"), self._note(0))
        targets = ds.selected_targets(XML, ["//fsdp/..."], "gpu,-ws1")
        line = ds.note("cuda", 1, "gpu,-ws1", targets)
        self.assertTrue(line.startswith("tools/bazel: 2 of 2 selected"), line)
        self.assertTrue(line.endswith("none of them can run here"), line)


if __name__ == "__main__":
    unittest.main()
