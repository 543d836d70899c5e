"""catalogtune: teach a small foundation model a product catalogue, and prove what changed."""

__version__ = "0.1.0"
