"""polar-metering: usage-based billing on Polar meters for Python web apps (public API filled in below)."""
