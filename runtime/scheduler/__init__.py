"""The scheduler: applications placed on engines by a policy, rebalanced, and recovered
from checkpoints when a board dies (see ``model.py`` for the data, ``service.py`` for the
Dispatcher client that applies it)."""
