"""``manage.py polar_metering_setup``: create the catalog's meters where the configured backend keeps them.

The same work as ``polar-metering setup``, configured from ``settings.POLAR_METERING``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from polar_metering._exceptions import MeteringError
from polar_metering.integrations.django import get_client


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    help = "Create the meters of the catalog in Polar (or the embedded engine); safe to run again."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        from polar_metering._setup import run_setup

        try:
            report = run_setup(client=get_client(), dry_run=options["dry_run"])
        except MeteringError as exc:
            raise CommandError(f"polar_metering_setup: {exc}") from exc
        self.stdout.write(str(report))
        if not report.ok:
            raise CommandError(f"polar_metering_setup: {len(report.errors)} meter(s) could not be created")
