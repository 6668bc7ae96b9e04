"""relist: coarse ranking, fine ranking and whole-list re-ranking for e-commerce feeds."""

__version__ = "0.1.0"
