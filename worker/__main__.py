"""`python -m worker` runs the same command line as the `partner-sync` script."""

from __future__ import annotations

from worker.cli import main

if __name__ == "__main__":
    main()
