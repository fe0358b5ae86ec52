"""`python -m devserver`: the same command as `partner-sync devserver`."""

from __future__ import annotations

from devserver._cli import main

if __name__ == "__main__":
    main()
