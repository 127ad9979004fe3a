"""The suite's tools; a package so that tools.report and tools.device_table import one way."""
