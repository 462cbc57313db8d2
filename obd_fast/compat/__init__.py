"""Drop-in replacements for parts of other OBD code bases (``obd_fast.compat.obd``: the official OBD code)."""
from . import obd

__all__ = ["obd"]
