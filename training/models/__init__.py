"""One module per ReWaS network. Each exposes a ``*Config`` dataclass (with
``rewas_m()`` for the released sizes and ``from_reference()`` for the golden
reference configs) and an ``nn.Module`` built from it whose ``state_dict`` keys
are the original's names with the checkpoint-file prefix removed."""
