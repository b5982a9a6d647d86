"""``python -m archiver``: the same as ``segments archiver``."""

from archiver.worker import main

raise SystemExit(main())
