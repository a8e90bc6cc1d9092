"""``python -m tidings`` runs the CLI."""

from tidings.cli import main

raise SystemExit(main())
