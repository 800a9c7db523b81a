"""The usage dashboard: ``polar-metering dashboard``, or an ASGI app to mount in your own.

::

    from polar_metering.dashboard import create_app

    app = create_app(client, auth=lambda request: request.user.is_staff)   # behind your login
    app = create_app(client, token="...")                                   # its own token login

Needs the ``dashboard`` extra (Starlette, Jinja2, uvicorn). See ``docs/dashboard.md``.
"""

from polar_metering.dashboard._app import DashboardSettings, create_app
from polar_metering.dashboard._auth import new_token

__all__ = ["DashboardSettings", "create_app", "new_token"]
