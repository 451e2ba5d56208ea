"""Training: the bundled reference model (:mod:`~unmask.contrib.train.model`), Learn2PD traces of oracle
decodes (:mod:`~unmask.contrib.train.traces`) and filters fitted on them (:mod:`~unmask.contrib.train.filters`)."""
