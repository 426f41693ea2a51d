"""Data: task suite (reasoning-gym), procedural teacher, corpora, mixtures, tokenizer, packing.

Import the submodules directly (``slingshot.data.tasks`` ...): this package keeps no
eager imports so ``slingshot.rewards`` and ``slingshot.data`` can use each other.
"""
