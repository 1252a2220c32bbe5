"""The pure evaluation engine: flagd flag definitions compiled once, evaluated as flagd does.

No I/O, no clock, no randomness: time is an argument. Errors are values
(``Resolution.error_code``, ``Problem``), never exceptions.

    compile_flag / compile_flag_set   flagd JSON -> CompiledFlag (or problems)
    evaluate / evaluate_typed         CompiledFlag + context + now -> Resolution
"""

from app.engine.compile import compile_flag, compile_flag_set
from app.engine.evaluate import evaluate, evaluate_typed, flag_not_found
from app.engine.model import (
    FRACTIONAL_VERSION_KEY,
    CompiledFlag,
    ErrorCode,
    FractionalVersion,
    JsonObject,
    JsonValue,
    Reason,
    Resolution,
)
from app.engine.operators import fractional_split
from app.engine.problems import Problem

__all__ = [
    "FRACTIONAL_VERSION_KEY",
    "CompiledFlag",
    "ErrorCode",
    "FractionalVersion",
    "JsonObject",
    "JsonValue",
    "Problem",
    "Reason",
    "Resolution",
    "compile_flag",
    "compile_flag_set",
    "evaluate",
    "evaluate_typed",
    "flag_not_found",
    "fractional_split",
]
