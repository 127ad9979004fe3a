"""Repository rule: the Starlark device table, generated from testing/devices.py.

testing/devices.py is the one hand-edited device table. This rule runs
`tools/device_table.py starlark` on it and puts the result in
`@<name>//:devices.bzl` (`DEVICES`, `MULTI_DEVICE_TAG`), which tools/devices.bzl loads.
Both files are read through labels, so Bazel re-runs the rule when either changes.
"""

_TABLE = Label("//testing:devices.py")
_GENERATOR = Label("//tools:device_table.py")

def _python(rctx):
    """The configured interpreter (as in python_configure.bzl), else python3 on PATH."""
    for name in ("FSDP_PYTHON", "FSDP_VENV_PYTHON"):
        python = rctx.os.environ.get(name, "")
        if python and rctx.path(python).exists:
            return python
    python = rctx.which("python3")
    if not python:
        fail("\nfsdp-conformance: no python3 to read the device table (testing/devices.py)")
    return python

def _devices_repository_impl(rctx):
    table = rctx.path(_TABLE)
    generator = rctx.path(_GENERATOR)
    result = rctx.execute([_python(rctx), generator, "starlark", "--table", table])
    if result.return_code != 0:
        lines = (result.stdout + result.stderr).strip().splitlines()
        fail("\nfsdp-conformance: cannot read the device table %s: %s" % (
            table,
            lines[-1] if lines else "the generator failed",
        ))
    rctx.file("devices.bzl", result.stdout)
    rctx.file("BUILD.bazel", "exports_files([\"devices.bzl\"])\n")
    rctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % rctx.name)

devices_repository = repository_rule(
    implementation = _devices_repository_impl,
    environ = ["FSDP_PYTHON", "FSDP_VENV_PYTHON"],
    doc = """Makes `@<name>//:devices.bzl`, the Starlark form of testing/devices.py.

Example (WORKSPACE):
  ```
  load("//tools:devices_repository.bzl", "devices_repository")

  devices_repository(name = "fsdp_devices")
  ```
""",
)
