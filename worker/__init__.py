"""The partner-sync worker: the daemon that keeps pairs in step, and its command line."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
