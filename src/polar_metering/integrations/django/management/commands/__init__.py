"""``manage.py polar_metering_setup``."""
