"""``python -m blosam_med`` is the same command as ``blosam``."""

from blosam_med.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
