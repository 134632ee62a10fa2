"""Applications built on the package: run comparisons, demos, pipelines."""
