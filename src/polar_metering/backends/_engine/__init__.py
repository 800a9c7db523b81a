"""The local metering engine (SQLite and PostgreSQL)."""
