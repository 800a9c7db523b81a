"""``python -m polar_metering.emulator``: serve the emulator (see ``--help``)."""

from polar_metering.emulator._cli import main

raise SystemExit(main())
