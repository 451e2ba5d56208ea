"""``python -m unmask``: the command line (what ``torchrun -m unmask`` and ``accelerate launch -m unmask`` run)."""

from unmask.contrib.cli import main

raise SystemExit(main())
