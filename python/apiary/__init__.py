"""Apiary: a lakehouse for small computers.

    from apiary import Apiary
    with Apiary("farm") as ap:
        ap.create_hive("farm")
        table = ap.query("SELECT 1 AS one")   # a pyarrow.Table
"""

from ._apiary import (
    AlreadyExists,
    Apiary,
    ApiaryError,
    Busy,
    Conflict,
    InvalidInput,
    NotFound,
    Timeout,
    Unsupported,
    __version__,
)

__all__ = [
    "Apiary",
    "ApiaryError",
    "NotFound",
    "AlreadyExists",
    "Conflict",
    "Unsupported",
    "InvalidInput",
    "Busy",
    "Timeout",
    "__version__",
]
