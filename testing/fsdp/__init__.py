"""FSDP model builders, wrapping and parity helpers for FSDP1 and FSDP2.

Modules: ``models`` (seeded model builders and registry), ``wrapping``
(``wrap()`` for both APIs), ``data`` (per-rank and global batches),
``training`` (FSDP and reference training, ``check_against_reference``),
``params`` (``full_params``/``full_grads``), ``parity`` (assertions with
readable failures), ``compat`` (version-tolerant imports).  See README.md.
"""
