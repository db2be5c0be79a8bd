"""Engines: one module each (``trtsweep.engines.<name>``), discovered by name. See ``base``."""
