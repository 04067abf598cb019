"""How a run runs, apart from the method: the device mesh (`sharding`), processes
(`distributed`), the training loop both stages share (`loop`), checkpoints, the workdir and
its stage identities, metrics and progress (`monitoring`)."""
