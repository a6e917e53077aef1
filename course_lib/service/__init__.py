"""The agent service: a small support agent behind FastAPI that composes course_lib's patterns.

    from course_lib.service import Settings, create_app
    app = create_app(Settings.from_env())          # or: course-lib serve

See `app` for the order of the guards and `settings` for the COURSE_LIB_* variables.
"""

from __future__ import annotations

from .app import Service, app_from_env, create_app
from .errors import STATUS, ServiceError
from .settings import Settings, SettingsError

__all__ = ["STATUS", "Service", "ServiceError", "Settings", "SettingsError", "app_from_env", "create_app"]
