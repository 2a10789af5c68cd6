"""Subcommands of `pasu` that belong to the shared package (demo, decode, bench)."""
