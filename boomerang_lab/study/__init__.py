"""Entry points: the `boomerang` command line, the notebook pipeline, its stages and publishing."""
