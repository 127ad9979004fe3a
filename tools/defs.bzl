"""Build macros for FSDP conformance tests.

`fsdp_test` turns one test file into a `py_test` per device and world size, tagged so
that `--config=cpu|cuda|hpu|xpu` (see .bazelrc) selects the tests for that device.
`fsdp_test_suites` adds one `test_suite` per device to a package. The devices and what
each needs (tags, remote execution properties) are in //tools:devices.bzl.
"""

load("@fsdp_python//:defs.bzl", "PYTHON_ENV_VERSIONS")
load(":devices.bzl", "ALL_DEVICES", "DEVICES", "device_exec_properties", "device_tags")

def _default_world_sizes(device):
    """A device's world sizes when a test declares none (testing/applicability.py agrees).

    Accelerators also run at 1, so a one-device host runs every test that holds there.
    """
    return [1, 2] if DEVICES[device].accelerator else [2]

def _per_device(value, device, default, what):
    """Resolves an attribute given either for all devices or as a dict per device."""
    if value == None:
        return default
    if type(value) == type({}):
        for key in value:
            if key not in DEVICES:
                fail("%s: unknown device %r (known: %s)" % (what, key, ", ".join(ALL_DEVICES)))
        return value.get(device, default)
    return value

def _rule_terms(name, rule):
    """Parses a world-size rule "TERMS: reason" (see testing/applicability.py)."""
    head, sep, reason = rule.partition(":")
    terms = [t.strip() for t in head.split(",") if t.strip()]
    for term in terms:
        digits = term[2:] if term.startswith(">=") or term.startswith("<=") else term
        if term not in ("any", "even", "odd") and not digits.isdigit():
            fail("fsdp_test %s: world-size rule %r: expected comma-separated N, >=N, <=N, even, odd or any, then ': reason'" % (name, rule))
    if not terms:
        fail("fsdp_test %s: world-size rule %r is empty" % (name, rule))
    if terms != ["any"] and not (sep and reason.strip()):
        fail("fsdp_test %s: world-size rule %r: say why after a colon ('>=2: why')" % (name, rule))
    return terms

def _rule_allows(terms, ws):
    for term in terms:
        if term == "any" or (term == "even" and ws % 2 == 0) or (term == "odd" and ws % 2 == 1):
            return True
        if term.startswith(">=") and ws >= int(term[2:]):
            return True
        if term.startswith("<=") and ws <= int(term[2:]):
            return True
        if term.isdigit() and ws == int(term):
            return True
    return False

def _world_sizes_for(name, world_sizes, device, terms):
    sizes = _per_device(world_sizes, device, None, "world_sizes")
    if sizes == None:
        sizes = [ws for ws in _default_world_sizes(device) if _rule_allows(terms, ws)]
        if not sizes:
            fail("fsdp_test %s: no default world size of %s (%s) satisfies valid_world_sizes; declare world_sizes" % (
                name,
                device,
                _default_world_sizes(device),
            ))
    if not sizes:
        fail("world_sizes for %s is empty" % device)
    for ws in sizes:
        if type(ws) != type(0) or ws < 1:
            fail("world_sizes for %s: %r is not a positive int" % (device, ws))
        if not _rule_allows(terms, ws):
            fail("fsdp_test %s: world size %d on %s is outside valid_world_sizes" % (name, ws, device))
    return sorted(sizes)

def _target_name(name, device, ws, sizes):
    """`<name>_<device>` for world size 2 (else the smallest), `..._ws<N>` for the others."""
    main = 2 if 2 in sizes else sizes[0]
    target = "%s_%s" % (name, device)
    return target if ws == main else target + "_ws%d" % ws

def fsdp_test(
        name,
        srcs = None,
        deps = [],
        data = [],
        api = None,
        world_sizes = None,
        valid_world_sizes = "any",
        cases = {},
        devices = None,
        disabled = {},
        shard_count = None,
        size = None,
        args = [],
        tags = [],
        large = {},
        **kwargs):
    """Defines one py_test per device and world size for an FSDP test file.

    World size 2 (else the smallest) of a device gets the target `<name>_<device>`; each
    other one gets `<name>_<device>_ws<N>`. Every target runs `srcs[0]` with
    `--device=<device> --world_size=<N>` ahead of `args` and depends on `//testing`.

    Tags, which the report (tools/report) reads instead of parsing target names:
    the device tag (`cpu`, `gpu`, `hpu` or `xpu`), `ws<N>`, `large` from the device's
    `large_world_size` on (4 on cpu, 8 on accelerators; left out of the default run,
    `--config=large` runs them), the device's interoperable
    tags (`requires-gpu-nvidia` on cuda), `requires-multi-device` on accelerator targets
    with more than one rank, `fsdp`, `block-network` (no network needed: ranks meet
    through a FileStore and bind ephemeral ports; .bazelrc's process-wrapper sandbox
    ignores the tag) and `api` if given. Remote execution properties:
    `device=<device>`, plus `gpus=<N>` and `Pool=<device>-<N>` on accelerators. Both come
    from the device table in //tools:devices.bzl.

    A test whose device is absent fails rather than skips, unless it is run with
    `--test_arg=--missing_device=skip`.

    Args:
      name: base name of the generated targets; also the default source, `<name>.py`.
      srcs: Python sources; the first is the test's main file. Defaults to
        `[name + ".py"]`.
      deps: extra py_library dependencies; `//testing` is always added.
      data: data files the test reads at run time.
      api: the FSDP API the test exercises, e.g. `"fsdp1"` or `"fsdp2"`; added as a tag
        so `--test_tag_filters=fsdp2` selects it.
      world_sizes: world sizes to run; a list for every device, or a dict from device
        to list. A device without one gets its defaults (`[2]` on cpu, `[1, 2]` on
        accelerators) less those `valid_world_sizes` excludes. Say why in a comment
        beside sizes other than the default. pytest runs the same sizes by default.
      valid_world_sizes: the sizes at which the file's checks hold, as
        `"TERMS: reason"` with comma-separated terms `N`, `>=N`, `<=N`, `even`, `odd`
        or `any` (default). Every size in `world_sizes` must satisfy it; pytest's
        `--world-size` outside it reports the file's tests as not run, with the reason.
      cases: method-level deviations: `{method name or fnmatch glob: {"world_sizes":
        rule, "disabled": {device: reason}}}`. Such a case is reported as not run, with
        its reason, where it does not apply (testing/applicability.py).
      devices: devices to generate targets for, a subset of the keys of `DEVICES` in
        //tools:devices.bzl (`cpu`, `cuda`, `hpu`, `xpu`). Defaults to all of them.
      disabled: dict from device to a reason. That device's targets are still defined
        but tagged `manual`, `disabled` and `disabled:<reason>`, so `//...` skips them
        while `bazel test //pkg:<target>` still runs them.
      shard_count: number of shards, an int or a dict from device to int.
        Defaults to 1.
      size: test size, a string or a dict from device to string. Defaults to
        `"medium"`.
      args: extra arguments passed to the test after `--device` and `--world_size`.
      tags: extra tags added to every generated target.
      large: dict from device to a reason: that device's targets are tagged `large` at
        every world size (out of the default run; `--config=large` runs them).
      **kwargs: passed through to every `py_test` (e.g. `timeout`, `flaky`, `env`).

    Examples:
      ```
      load("//tools:defs.bzl", "fsdp_test", "fsdp_test_suites")

      fsdp_test(
          name = "mixed_precision_test",
          api = "fsdp2",
          # 4 ranks on cuda: bf16 reduce-scatter rounding differs from 2 ranks'.
          world_sizes = {"cpu": [2], "cuda": [2, 4]},
          disabled = {"hpu": "no bf16 reduce-scatter yet"},
          shard_count = {"cuda": 4},
      )

      fsdp_test_suites()
      ```

      This makes `mixed_precision_test_cpu`, `mixed_precision_test_cuda`,
      `mixed_precision_test_cuda_ws4` (tagged `gpu`, `ws4`, `requires-gpu-nvidia`,
      `requires-multi-device`, `fsdp2`, ...; exec properties `device=cuda`, `gpus=4`,
      `Pool=cuda-4`), `mixed_precision_test_hpu` (manual) and `mixed_precision_test_xpu`.
    """
    if srcs == None:
        srcs = [name + ".py"]
    if not srcs:
        fail("fsdp_test %s: srcs is empty" % name)
    if devices == None:
        devices = ALL_DEVICES
    for device in list(devices) + list(disabled.keys()):
        if device not in DEVICES:
            fail("fsdp_test %s: unknown device %r (known: %s)" % (
                name,
                device,
                ", ".join(ALL_DEVICES),
            ))
    if "main" in kwargs:
        fail("fsdp_test %s: main is always srcs[0]" % name)
    env = dict(kwargs.pop("env", {}))

    # Part of every test's cache key: changing the interpreter's packages reruns tests.
    env.setdefault("FSDP_PYTHON_ENV", PYTHON_ENV_VERSIONS)

    terms = _rule_terms(name, valid_world_sizes)
    for pattern, case in cases.items():
        for key in case:
            if key not in ("world_sizes", "disabled"):
                fail("fsdp_test %s: cases[%r] has unknown key %r" % (name, pattern, key))
        if "world_sizes" in case:
            _rule_terms(name, case["world_sizes"])
        for device in case.get("disabled", {}):
            if device not in DEVICES:
                fail("fsdp_test %s: cases[%r] disables unknown device %r" % (name, pattern, device))

    # The harness reads the rules from here (pytest reads them from this BUILD file);
    # env, not args, because args are shell-tokenized and reasons have spaces.
    env["FSDP_TEST_APPLICABILITY"] = json.encode({
        "api": api,
        "cases": cases,
        "valid_world_sizes": valid_world_sizes,
    })

    all_deps = list(deps)
    if "//testing" not in all_deps:
        all_deps.append("//testing")

    for device in large:
        if device not in DEVICES:
            fail("fsdp_test %s: large names unknown device %r" % (name, device))
        if not large[device]:
            fail("fsdp_test %s: large[%r] needs a reason" % (name, device))

    for device in devices:
        info = DEVICES[device]
        sizes = _world_sizes_for(name, world_sizes, device, terms)
        disabled_tags = []
        if device in disabled:
            disabled_tags = ["manual", "disabled", "disabled:" + disabled[device]]
        for ws in sizes:
            target = _target_name(name, device, ws, sizes)

            # Out of the default `bazel test //...` (.bazelrc: -large); --config=large runs them.
            is_large = ws >= info.large_world_size or device in large
            large_tags = ["large"] if is_large and "large" not in tags else []

            # buildifier: disable=native-py
            native.py_test(
                name = target,
                srcs = srcs,
                main = srcs[0],
                deps = all_deps,
                data = data,
                args = ["--device=" + device, "--world_size=%d" % ws] + args,
                env = env,
                exec_properties = device_exec_properties(device, ws),
                python_version = "PY3",
                shard_count = _per_device(shard_count, device, info.shard_count, "shard_count"),
                size = _per_device(size, device, info.size, "size"),
                tags = device_tags(device, ws) + ["block-network", "fsdp"] +
                       ([api] if api else []) + disabled_tags + tags + large_tags,
                **kwargs
            )

def fsdp_fixtures(name = "fixtures"):
    """The fixtures only one package's tests use: a `py_library` of `fixtures/*.py`.

    What every package uses is //testing (testing/fsdp); a module moves into a package's
    `fixtures/` when that package alone imports it (its `__init__.py` lists them). The
    package's `fsdp_test` targets that import one add `deps = [":fixtures"]`.

    Args:
      name: the library's name.
    """
    native.py_library(
        name = name,
        srcs = native.glob(["fixtures/*.py"]),
        deps = ["//testing"],
    )

def fsdp_test_suites(name = None):
    """Defines one test_suite per device tag, and the package's applicability record.

    Call it at the end of a BUILD file, after every `fsdp_test`. The suites are
    `<tag>_tests` for each device tag of //tools:devices.bzl: `cpu_tests`, `gpu_tests`,
    `hpu_tests` and `xpu_tests` (prefixed with `<name>_` when name is given); each holds
    the package's non-manual tests with that tag.

    It also defines `applicability` (`<name>_applicability`): `applicability.json`, the
    targets the package's `fsdp_test`s made (device, world size, the declaration passed
    to the harness, tags), with the BUILD file, the test sources and the package's own
    libraries they depend on (`:fixtures`) as runfiles.
    //testing/tests:applicability_test compares it with what pytest reads from the same
    BUILD file, so the two runners cannot drift apart.

    Args:
      name: optional prefix of the suite names.

    Examples:
      ```
      fsdp_test_suites()
      ```

      Then `bazel test //fsdp:gpu_tests` runs every CUDA test in `//fsdp`.
    """
    for device in ALL_DEVICES:
        suite = DEVICES[device].tag + "_tests"
        native.test_suite(
            name = (name + "_" + suite) if name else suite,
            tags = [DEVICES[device].tag],
        )
    targets = []
    srcs = native.glob(["BUILD.bazel", "BUILD"])
    for rule in native.existing_rules().values():
        if rule["kind"] != "py_test" or "fsdp" not in rule["tags"]:
            continue
        targets.append({
            "applicability": rule["env"].get("FSDP_TEST_APPLICABILITY"),
            "args": rule["args"],
            "generator": rule["generator_name"],
            "name": rule["name"],
            "srcs": rule["srcs"],
            "tags": rule["tags"],
        })
        srcs.extend([src for src in rule["srcs"] if src not in srcs])

        # The package's own libraries (its fixtures): importing a test file needs them.
        local = [d for d in rule["deps"] if d.startswith(":") or d.startswith("//%s:" % native.package_name())]
        srcs.extend([dep for dep in local if dep not in srcs])
    _applicability_json(
        name = (name + "_applicability") if name else "applicability",
        content = json.encode({"package": native.package_name(), "targets": targets}),
        srcs = srcs,
        visibility = ["//visibility:public"],
    )

def _applicability_json_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".json")
    ctx.actions.write(out, ctx.attr.content + "\n")
    files = depset([out])
    return [DefaultInfo(files = files, runfiles = ctx.runfiles(files = [out] + ctx.files.srcs))]

_applicability_json = rule(
    implementation = _applicability_json_impl,
    doc = "Writes `<name>.json` (fsdp_test_suites' record); the sources come along as runfiles.",
    attrs = {
        "content": attr.string(mandatory = True),
        "srcs": attr.label_list(allow_files = True),
    },
)
