"""The FSDP test library every test package uses: models, wrapping, training, parity.

Fixtures only one test package uses live beside it, in ``fsdp/<package>/fixtures/``.
See README.md for each module's functions. The modules:

* ``accumulation``: the reference and the synchronized-step check of gradient accumulation.
* ``api_cases``: ``API_CASES`` (one ``_fsdp1``/``_fsdp2`` case per API), ``api_cases_with``
  (per-API wrap options) and ``EVAL_STEP`` (the batch index no training step draws).
* ``at_world_size``: what FSDP does at a given world size (NO_SHARD at 1, padding,
  empty shards), so tests derive their expectations from it.
* ``collective_count``: a training step's collectives per phase, against a table.
* ``collective_spy``: records the collectives FSDP issues (Python-level reductions, and
  every collective op reaching the dispatcher).
* ``compat``: version-tolerant imports of FSDP1 and FSDP2, and every private torch call.
* ``data``: deterministic per-rank and global batches.
* ``distinct_size_units``: a chain of units of distinct byte sizes, so a collective's
  bytes name its unit, and each unit can trace its forward and backward.
* ``equal_unit_stack``: a stack of equal units for memory tests, with its wrapping,
  one unit's unsharded bytes and rank-distinct inputs.
* ``meshes``: 2-D (replicate x shard) meshes for hybrid sharding, and meshes with a
  tensor- or expert-parallel dimension.
* ``models``: seeded model builders and their registry (``get``, ``names``).
* ``module_state_sync``: rank-distinct models made identical across ranks (broadcast,
  ``sync_module_states``), and the check that they hold rank 0's init and then train.
* ``output_models``: registry models whose forward returns more than one tensor.
* ``params``: full (unsharded) parameters, buffers and gradients as plain CPU tensors.
* ``parity``: assertions whose failures say what diverged, where and by how much.
* ``rank_device``: the device of the rank this process runs, which helpers use when
  given no ``device``.
* ``state_dicts``: sharded state dicts of FSDP1 and FSDP2, in memory and through dcp.
* ``training``: training loops for an FSDP model and its non-FSDP reference, and
  ``check_against_reference``.
* ``transformer_models``: registry transformers (tied embeddings, odd sizes).
* ``wrapping``: ``wrap()``: one API for FSDP1 and FSDP2.
"""
