"""orgmove: move one Organization between PostgreSQL Cells."""
__version__ = "0.1.0"
