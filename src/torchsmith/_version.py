"""The package version, in a module every layer may import (``checkpoint`` writes it into configs)."""

__version__ = "0.1.0"
