"""Stage 8, what ships: the QDQ export and the report."""
