"""``python -m pyconcepts`` runs the command line."""

from pyconcepts.cli import main

raise SystemExit(main())
