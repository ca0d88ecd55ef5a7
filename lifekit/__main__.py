"""``python -m lifekit``: the same as the ``lifekit`` command."""

from lifekit._cli import main

raise SystemExit(main())
