"""Status codes and the exception that carries them."""
import enum


class Status(enum.IntEnum):
    """lt_status: LT_OK and the LT_ERR_* codes of include/loratune.h."""

    OK = 0
    ERR_ARGUMENT = 1
    ERR_NOMEM = 2
    ERR_IO = 3
    ERR_TRUNCATED = 4
    ERR_FORMAT = 5
    ERR_JSON = 6
    ERR_DTYPE = 7
    ERR_SHAPE = 8
    ERR_MISSING = 9
    ERR_ARCH = 10
    ERR_BACKEND = 11
    ERR_NUMERIC = 12
    ERR_DATA = 13
    ERR_STATE = 14
    ERR_UNSUPPORTED = 15
    ERR_INTERNAL = 16

    @classmethod
    def _missing_(cls, value):  # a status added by a newer library
        obj = int.__new__(cls, value)
        obj._name_ = f"ERR_{value}"
        obj._value_ = value
        return obj


class LoratuneError(Exception):
    """A libloratune call failed.

    Attributes:
        status:  the Status the C function returned
        message: the library's message for it (lt_*_last_error / lt_last_error)
    """

    def __init__(self, status: int, message: str):
        self.status = Status(status)
        self.message = message
        super().__init__(status, message)

    def __str__(self) -> str:
        return f"LT_{self.status.name}: {self.message}" if self.message else f"LT_{self.status.name}"

    def __repr__(self) -> str:
        return f"LoratuneError({self.status.name}, {self.message!r})"
