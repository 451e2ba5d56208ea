"""``python -m unmask``: the command line. Python puts the working directory first on the import path for
``-m``, so prefer the installed ``unmask`` command (``torchrun --no-python ... unmask``) or ``python -P -m unmask``
(docs/trust.md)."""

from unmask.contrib.cli import main

raise SystemExit(main())
