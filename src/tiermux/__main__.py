"""``python -m tiermux`` is the ``tiermux`` command."""

from tiermux.cli import main

raise SystemExit(main())
