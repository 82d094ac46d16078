"""One module per graph node; ``agents/graph.py`` only wires them."""
