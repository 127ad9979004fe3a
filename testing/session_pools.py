"""Session-wide rank pools: one per (device, world size, start method), see --pool_scope.

Test classes hold the pool they run on in their ``_pool`` attribute; a session pool
is held by one class at a time and outlives it, until it breaks, retires or the
session ends.
"""

from typing import Dict, Set, Tuple

from testing import rank_pool

_POOLS: Dict[Tuple[str, int, str], rank_pool.RankPool] = {}
# The test classes whose ``_pool`` is each pool: letting go of a pool must clear every
# holder, and this module cannot import the classes (they import it).
_HOLDERS: Dict[rank_pool.RankPool, Set[type]] = {}


def hold(cls: type, pool: rank_pool.RankPool) -> None:
    """Makes ``pool`` the pool of test class ``cls`` and remembers that it holds it."""
    cls._pool = pool
    _HOLDERS.setdefault(pool, set()).add(cls)


def get(key: Tuple[str, int, str]):
    """The live session pool for ``key``, or None."""
    return _POOLS.get(key)


def register(key: Tuple[str, int, str], pool: rank_pool.RankPool) -> None:
    """Makes ``pool`` the session pool for ``key``."""
    _POOLS[key] = pool


def discard(pool: rank_pool.RankPool) -> None:
    """Lets go of ``pool``: closes it unless it is a healthy session-wide pool.

    A session pool that broke or retired is closed and forgotten, so the next test
    gets a fresh one; a healthy one stays for the next class until close_all().
    """
    _release_holders(pool)
    session_key = next((k for k, p in _POOLS.items() if p is pool), None)
    if session_key is not None and not pool.broken and not pool.retired:
        return
    if session_key is not None:
        del _POOLS[session_key]
    pool.close()


def close_all() -> None:
    """Ends every session-wide pool cleanly."""
    for key in list(_POOLS):
        pool = _POOLS.pop(key)
        _release_holders(pool)
        pool.close()


def _release_holders(pool: rank_pool.RankPool) -> None:
    """Clears ``_pool`` on every test class that holds ``pool``."""
    for cls in _HOLDERS.pop(pool, ()):
        if cls.__dict__.get("_pool") is pool:
            cls._pool = None
