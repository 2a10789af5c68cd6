"""pasu's offline tools: corpus recipe, training, benchmarks, experiments and the `pasu` commands
that drive them. Nothing here runs on a device or a cloud worker at serving time."""
