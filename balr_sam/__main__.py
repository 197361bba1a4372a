"""``python -m balr_sam`` is the same as the ``balr-sam`` console command."""

from balr_sam.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
