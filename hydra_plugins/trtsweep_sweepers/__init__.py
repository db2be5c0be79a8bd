"""trtsweep's Hydra sweepers: ``trtsweep`` (grid, the default) and ``optuna`` (search).

Kept light: nothing heavy is imported at module import (Hydra scans plugins at every start).
"""
