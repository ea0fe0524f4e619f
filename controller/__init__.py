"""ffrtmp: a reconciliation controller for transcoding and job farms."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ffrtmp")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"



def __getattr__(name: str) -> object:
    # `controller.StaleAttempt` without importing the store at `import controller` time.
    if name == "StaleAttempt":
        from controller.farm import StaleAttempt

        return StaleAttempt
    raise AttributeError(f"module 'controller' has no attribute {name!r}")


__all__ = ["StaleAttempt", "__version__"]
