"""Shared testing library of fsdp-conformance: multi-rank harness and FSDP helpers."""
