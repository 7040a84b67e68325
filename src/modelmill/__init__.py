"""modelmill: a self-hosted model factory.

    modelmill --help
"""

__version__ = "0.1.0"
