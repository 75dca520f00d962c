"""Mini world v2 (model id ``mini-v2``): see ``bench/worlds/__init__.py`` and ``reading.py`` for its definition."""
