# Marks the Hydra config tree as the package `fidesr.conf` (see pyproject.toml, package-dir).
