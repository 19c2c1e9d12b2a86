"""The dashboard's web service: FastAPI under uvicorn, REST under ``/api/v1``, one WebSocket,
a token like Jupyter's, and jobs (one process per workflow call) recorded in the run registry.

    from webapp import DashboardSettings, create_app
    app = create_app(DashboardSettings(store="data_storage"))

``btml dashboard`` starts it on 127.0.0.1:8000. The built React frontend (``frontend/``) ships
in ``webapp/static`` and is served at ``/``.
"""

from webapp.app import create_app
from webapp.settings import DashboardSettings

__all__ = ["DashboardSettings", "create_app"]
