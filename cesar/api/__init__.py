"""The CESAR API service.

``cesar.api.app.create_app`` builds the FastAPI application; ``cesar api`` (``cesar.api.command``)
serves it with uvicorn. Modules: ``app`` (application, error handling, request metrics),
``agents`` (``/agents``), ``health`` (``/health`` and the database-backed gauges), ``models``
(the response bodies, hence the OpenAPI document), ``server`` (uvicorn and worker set-up).

Nothing is imported here, so that ``cesar --help`` does not pay for FastAPI.
"""
