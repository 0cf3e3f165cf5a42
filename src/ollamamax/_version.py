"""The package version, in one place (read by the CLI, the status page, /api/version)."""

__version__ = "0.1.0"
