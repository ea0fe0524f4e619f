"""The HTTP API (SPEC section 8): a FastAPI app over the Farm, with auth, limits and long-polls."""

from controller.api.app import create_app
from controller.api.longpoll import WorkNotifier

__all__ = ["WorkNotifier", "create_app"]
