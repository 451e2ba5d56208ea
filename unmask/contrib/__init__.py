"""What touches the outside world, one sub-package per job: ``models`` (checkpoints in), ``tasks``
(prompts and scorers), ``eval`` (decode and score grids, reports), ``train`` (the reference model, traces,
filters), and ``cli`` on top of them."""
