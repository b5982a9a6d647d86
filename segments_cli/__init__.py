"""The ``segments`` console command (``segments_cli.main``)."""

from segments_cli.main import main

__all__ = ["main"]
