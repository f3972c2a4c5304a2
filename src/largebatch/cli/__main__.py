"""``python -m largebatch.cli``: the same as ``python -m largebatch``."""

from largebatch.cli import main

raise SystemExit(main())
