"""Alembic migrations for the engine's tables, shipped inside the package and run in code by
``polar_metering.backends._engine.migrations`` (no ``alembic.ini`` needed)."""
