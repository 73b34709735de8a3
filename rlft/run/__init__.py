"""A training run and what keeps it safe: the CLI (`cli`), `train(cfg)` (`train`), the config
directory and its resolvers (`config`), the checks of a composed config (`validation`),
checkpoints (`checkpoints`), the store of paid reward answers (`answers`), stopping on a signal
(`preemption`), random states (`rng`), data parallelism (`distributed`) and the exported LoRA
(`lora_export`)."""
