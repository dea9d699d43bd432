"""`python -m train` is the `blockmix` command."""

from train.cli import main

raise SystemExit(main())
