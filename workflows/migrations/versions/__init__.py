"""The run registry's migration scripts, applied in ``down_revision`` order."""
