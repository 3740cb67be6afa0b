"""Models: loading (hub ids, paths, the embedded SmolLM2), per-architecture adapters, bridges, the layer plan and
the student's initialisation."""
