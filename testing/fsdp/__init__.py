"""FSDP model builders, wrapping and parity helpers for FSDP1 and FSDP2."""
