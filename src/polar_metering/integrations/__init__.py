"""Web framework integrations, each imported on its own so that only its framework is needed:

- ``polar_metering.integrations.fastapi`` (FastAPI and Starlette; ``pip install polar-metering[fastapi]``)
- ``polar_metering.integrations.django`` (``pip install polar-metering[django]``)
- ``polar_metering.integrations.flask`` (``pip install polar-metering[flask]``)

Each sets the current customer per request from a resolver (request -> organization id, else user id,
or ``None``), answers a usage-limit refusal with 429 and a JSON body, and can track ``api.request``.
"""
