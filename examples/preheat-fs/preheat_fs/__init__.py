"""preheat-fs: the `fs` source, a model directory on a local or network file system."""

__version__ = "0.1.0"
