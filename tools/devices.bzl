"""The devices the suite runs on, for Starlark: the table and what targets derive from it.

`DEVICES` and `MULTI_DEVICE_TAG` come from testing/devices.py, the one hand-edited
device table, through the generated `@fsdp_devices//:devices.bzl`
(tools/devices_repository.bzl). `//tools:devices_test` checks the generated table
against the Python one and `.bazelrc`'s device configs. README.md, "Adding a device",
lists the places to edit.
"""

load("@fsdp_devices//:devices.bzl", _DEVICES = "DEVICES", _MULTI_DEVICE_TAG = "MULTI_DEVICE_TAG")
load("@fsdp_remote_config//:defs.bzl", "POOL_NAMES")

# Tag of accelerator targets with more than one rank. A scheduler or CI filter that knows
# nothing of this suite can keep them off single-device hosts
# (`--test_tag_filters=-requires-multi-device`).
MULTI_DEVICE_TAG = _MULTI_DEVICE_TAG

# Per device, a struct of:
#   tag: what `--test_tag_filters` selects on; `.bazelrc`'s `test:<device>` uses it.
#   accelerator: each rank gets a device of its own, so targets ask remote execution for
#     `gpus=<world size>` and the pool `<device>-<world size>`.
#   visible_devices_env: the variable that restricts which devices a process sees ("" when
#     the device has none), for running several targets side by side on one host.
#   env_prefixes, env_vars: the host environment the device's runtime and collectives read
#     (prefixes, and exact names); a runner that passes a host's environment to tests
#     passes these.
#   interop_tags: tags that CI filters written for other projects already understand.
#   size, shard_count: `fsdp_test` defaults, which a test may override per device.
#   large_world_size: targets of this world size or more are tagged `large` (out of the
#     default run; `--config=large` runs them).
DEVICES = _DEVICES

ALL_DEVICES = sorted(DEVICES.keys())

def device_tags(device, world_size):
    """Returns the device-derived tags of one `fsdp_test` target.

    Args:
      device: a key of `DEVICES`.
      world_size: the target's world size.

    Returns:
      The device tag, `ws<N>`, the device's interoperable tags and, for accelerator
      targets with more than one rank, `MULTI_DEVICE_TAG`.
    """
    info = DEVICES[device]
    tags = [info.tag, "ws%d" % world_size] + info.interop_tags
    if info.accelerator and world_size > 1:
        tags.append(MULTI_DEVICE_TAG)
    return tags

def device_exec_properties(device, world_size):
    """Returns the remote-execution properties of one `fsdp_test` target.

    Every target asks for `device=<device>`. An accelerator target also asks for
    `gpus=<world size>` (the local BuildGrid's workers offer 1..N) and for the pool
    `Pool=<device>-<world size>`, the one key hosted services (EngFlow, BuildBuddy) route
    on, so one fleet can keep a pool per device kind and size; a user.bazelrc renames
    pools with `--repo_env=FSDP_REMOTE_POOLS=cuda-2=NAME,...`. Each key has the `test.`
    prefix: only the test action needs such a worker, the target's other actions keep
    the execution platform's properties (//tools/platforms:remote).

    Args:
      device: a key of `DEVICES`.
      world_size: the target's world size.

    Returns:
      A dict for `exec_properties`.
    """
    props = {"test.device": device}
    if DEVICES[device].accelerator:
        pool = "%s-%d" % (device, world_size)
        props["test.gpus"] = str(world_size)
        props["test.Pool"] = POOL_NAMES.get(pool, pool)
    return props

def _device_table_json_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".json")
    table = {
        "devices": DEVICES,
        "multi_device_tag": MULTI_DEVICE_TAG,
    }
    ctx.actions.write(out, json.encode_indent(table) + "\n")
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out]))]

device_table_json = rule(
    implementation = _device_table_json_impl,
    doc = """Writes this table to `<name>.json`, for tests that compare it with Python's.

Example:
  ```
  load("//tools:devices.bzl", "device_table_json")

  device_table_json(name = "devices_table")  # makes devices_table.json
  ```
""",
)
