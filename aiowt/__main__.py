"""`python -m aiowt ...` is the `aiowt` command."""

from .cli import main

raise SystemExit(main())
