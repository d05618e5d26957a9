"""``python -m byzedge``."""

from byzedge.cli import main

raise SystemExit(main())
