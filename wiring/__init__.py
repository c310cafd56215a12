"""The composition root: the app factory, the CLI, the pipeline and the demo."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crm-retention")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
