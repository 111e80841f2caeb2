"""The one rule for integer options: whole numbers only (never a bool, float or string).

Every config field and command-line option that must be a positive (or non-negative)
integer is checked here, so ``True`` or ``2.0`` is refused everywhere alike.  A failure is
one :class:`~ccsearch.errors.UserError` line: ``<where>: <name> must be a positive
integer, got <value!r>``.
"""

from __future__ import annotations

from numbers import Integral

from ccsearch.errors import UserError


def is_integer(value: object, minimum: int) -> bool:
    """``value`` is a whole number (numpy's included, bools not) and at least ``minimum``."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum


def _require(
    name: str, value: object, minimum: int, wanted: str, where: str | None, optional: bool
) -> None:
    if optional and value is None:
        return
    if not is_integer(value, minimum):
        prefix = f"{where}: " if where else ""
        either = " or null" if optional else ""
        raise UserError(f"{prefix}{name} must be {wanted}{either}, got {value!r}")


def positive_int(name: str, value: object, *, where: str | None = None, optional: bool = False) -> None:
    """Refuse anything but an integer >= 1 (``None`` too, unless ``optional``)."""
    _require(name, value, 1, "a positive integer", where, optional)


def nonnegative_int(
    name: str, value: object, *, where: str | None = None, optional: bool = False, note: str = ""
) -> None:
    """Refuse anything but an integer >= 0; ``note`` says what 0 means, e.g. ``" (0 = none)"``."""
    _require(name, value, 0, f"an integer >= 0{note}", where, optional)


def at_least(name: str, value: object, minimum: int, *, where: str | None = None,
             why: str = "") -> None:
    """Refuse anything but an integer >= ``minimum``; ``why`` says why that bound, e.g.
    ``" (a ranking needs three)"``."""
    _require(name, value, minimum, f"an integer >= {minimum}{why}", where, False)


__all__ = ["at_least", "is_integer", "nonnegative_int", "positive_int"]
