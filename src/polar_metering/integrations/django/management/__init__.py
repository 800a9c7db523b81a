"""Django management commands of polar-metering."""
