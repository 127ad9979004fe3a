"""pytest path: every multi-rank test at every world size its BUILD declares.

Bazel makes a target per world size; under pytest this plugin does the same within
one session. Each collected method of a ``MultiRankTestCase`` becomes one item per
world size that ``testing/run_plan.py`` plans for it, named ``<method>[ws<N>]``
(``-k ws4`` selects the size-4 ones). ``--world-size=N`` restricts the run to N.

Sizes that do not apply here (the declaration excludes them on this device, or the
host has fewer accelerators than they need) are taken out of the run, so they count
as neither passed, failed nor skipped. They are listed in one block at the end
("not run: N cases", then file / world size / reason) and recorded, with the reason,
in ``cases.json`` (``testing/case_params.py``) in the harness's output directory; the
plugin copies that file beside ``--junitxml``, where tools/report reads it.

Items run sorted by world size, so each size's session pool of ranks starts once;
the pools of one size are closed before the next size starts (device memory).
Needs pytest 8.2 or newer (unittest items built through ``_getinstance``).
"""

import os
from typing import Dict, List, Optional

import pytest

from testing import case_params
from testing import multirank
from testing import not_run
from testing import options
from testing import run_plan

_WORLD_SIZE_ENV = "FSDP_TEST_WORLD_SIZE"
# Set on the items this plugin makes.
_SIZE_ATTR = "fsdp_world_size"
_NOT_RUN_ATTR = "fsdp_not_run"

_SIZED_TYPES: Dict[type, type] = {}


def _case_name(item_name: str) -> str:
    """``test_x[ws2]`` -> ``test_x``: the unittest method behind an item."""
    return item_name.rsplit("[ws", 1)[0]


def _sized_type(base: type) -> type:
    """A subclass of pytest's unittest item whose name carries a ``[ws<N>]`` suffix."""
    if base not in _SIZED_TYPES:
        if not hasattr(base, "_getinstance"):
            raise pytest.UsageError(
                f"the world-size plan needs pytest 8.2 or newer (found {pytest.__version__})"
            )

        class SizedCase(base):
            # The unittest instance and method are the plain method's; only the item's
            # name (and so its node id) has the world size.
            def _getinstance(self):
                return self.parent.obj(_case_name(self.name))

            def _getobj(self):
                return getattr(self.instance, _case_name(self.name))

        SizedCase.__name__ = SizedCase.__qualname__ = "Sized" + base.__name__
        _SIZED_TYPES[base] = SizedCase
    return _SIZED_TYPES[base]


def _only_size() -> Optional[int]:
    """The world size ``--world-size`` restricts the run to, if given."""
    value = os.environ.get(_WORLD_SIZE_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"--world-size must be a positive integer, not {value!r}")
    return int(value)


def _is_multirank(item) -> bool:
    cls = getattr(item, "cls", None)
    return isinstance(cls, type) and issubclass(cls, multirank.MultiRankTestCase)


def _repo_relative(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def planned_items(item, device, visible: int, only: Optional[int]) -> List[object]:
    """The items of ``item`` per planned world size (not-run ones marked)."""
    path = str(getattr(item, "path", None) or item.fspath)
    try:
        sizes = run_plan.plan(path, item.name, device, visible, only)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    sized = _sized_type(type(item))
    made = []
    for planned in sizes:
        new = sized.from_parent(item.parent, name=f"{item.name}[ws{planned.world_size}]")
        setattr(new, _SIZE_ATTR, planned.world_size)
        setattr(new, _NOT_RUN_ATTR, planned.not_run)
        made.append(new)
    return made


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Expands each multi-rank item into one item per planned world size.

    First, so that ``-k``/``-m``/``--deselect`` see the sized items.
    """
    del session
    device = options.device()
    visible = device.visible_count() if device.accelerator else -1
    only = _only_size()
    expanded = []
    for item in items:
        if _is_multirank(item):
            expanded.extend(planned_items(item, device, visible, only))
        else:
            expanded.append(item)
    _count_collected(config, len(expanded) - len(items))
    items[:] = expanded
    config.stash[_PLAN_KEY] = _Plan(device=device.name)


def _count_collected(config, change: int) -> None:
    """Keeps pytest's "collected N items" line equal to the items it will run or deselect."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and isinstance(getattr(reporter, "_numcollected", None), int):
        reporter._numcollected += change


class _Plan:
    """What the session planned: its device and the not-run cases."""

    def __init__(self, device: str):
        self.device = device
        self.not_run: List[not_run.NotRun] = []
        self.last_size: Optional[int] = None


_PLAN_KEY = pytest.StashKey[_Plan]()


class _Finisher:
    """The trylast half of collection (a second plugin object, so one hook name serves twice)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        """Takes the not-run items out of the run and orders the rest by world size."""
        plan = config.stash[_PLAN_KEY]
        keep = []
        for item in items:
            reason = getattr(item, _NOT_RUN_ATTR, None)
            if reason is None:
                keep.append(item)
                continue
            case = not_run.NotRun(
                classname=f"{item.cls.__module__}.{item.cls.__qualname__}",
                method=_case_name(item.name),
                file=_repo_relative(str(getattr(item, "path", None) or item.fspath)),
                device=plan.device,
                world_size=getattr(item, _SIZE_ATTR),
                reason=reason,
            )
            plan.not_run.append(case)
            not_run.record(item.cls, case, multirank.output_dir())
        # Stable: within one size, the collection order (and so class grouping) stays.
        keep.sort(key=lambda item: getattr(item, _SIZE_ATTR, 0))
        _count_collected(config, len(keep) - len(items))
        items[:] = keep


def pytest_configure(config):
    """Registers the trylast half of collection."""
    config.pluginmanager.register(_Finisher(), "fsdp-world-size-plan-finisher")


def pytest_runtest_setup(item):
    """Gives the harness the item's world size; closes the pools of the previous size."""
    size = getattr(item, _SIZE_ATTR, None)
    if size is None:
        return
    plan = item.config.stash[_PLAN_KEY]
    if plan.last_size is not None and plan.last_size != size:
        # Sorted by size, so no later item needs them: free their processes and devices.
        multirank.close_session_pools()
    plan.last_size = size
    os.environ[_WORLD_SIZE_ENV] = str(size)


def pytest_terminal_summary(terminalreporter, config):
    """Prints the not-run block: a count, then file / world size / reason."""
    plan = config.stash.get(_PLAN_KEY, None)
    lines = not_run.summary_lines(plan.not_run) if plan else []
    if lines:
        terminalreporter.section("not run", sep="=")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session):
    """Writes cases.json beside the JUnit XML too, where tools/report looks."""
    plan = session.config.stash.get(_PLAN_KEY, None)
    junit = session.config.getoption("xmlpath", None)
    if plan is not None and junit:
        case_params.write(os.path.dirname(os.path.abspath(junit)))
