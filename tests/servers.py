"""Real HTTP for tests: the app's own background server helper (app/serving.py)."""

from app.serving import serve

__all__ = ["serve"]
