"""The Django app config: add ``"polar_metering.integrations.django"`` to INSTALLED_APPS for the
``polar_metering_setup`` management command."""

from __future__ import annotations

from django.apps import AppConfig


class PolarMeteringConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "polar_metering.integrations.django"
    # The default label would be "django", which reads as Django's own app in admin and migrations.
    label = "polar_metering"
    verbose_name = "Polar metering"
