"""Pre-training: the loop (`pretrain`), its optimizer and schedule, checkpoints and the runtime.

Import from the modules (`from mae.train.pretrain import pretrain`); re-exporting the function
here would shadow the module of the same name.
"""
