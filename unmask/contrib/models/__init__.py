"""Models: the transformers adapter and loading, the LLaDA converter, tiny checkpoints built from configs,
and the bundled reference model (a plug-in of its own: the model ``reference`` and its trained filters)."""
