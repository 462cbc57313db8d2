"""The former name of :mod:`obd_fast.atomic` (atomic file writes), kept so that code importing
``obd_fast.checkpoint`` keeps working. New code imports :mod:`obd_fast.atomic`."""
from .atomic import atomic_torch_save, atomic_write, atomic_write_text  # noqa: F401
