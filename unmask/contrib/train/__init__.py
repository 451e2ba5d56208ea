"""Training: the bundled reference model (:mod:`unmask.contrib.train.model`)."""
