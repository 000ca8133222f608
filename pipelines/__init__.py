"""Pipelines built from the kftune components, and the `kftune` CLI."""
