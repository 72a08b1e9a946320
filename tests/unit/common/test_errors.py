"""One exception root: every exception class medfed defines is a MedfedError (common/errors.py draws
the tree), so a caller can catch all of medfed's own errors, and only those, in one clause."""

import importlib
import inspect
import pkgutil

import medfed.client
import medfed.common
import medfed.server
import medfed.tools
from medfed.common.errors import USER_ERRORS, MedfedError, UserError


def medfed_modules() -> list[str]:
    names = []
    for package in (medfed.common, medfed.server, medfed.client, medfed.tools):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".__main__"):
                names.append(info.name)
    return names


def test_every_exception_medfed_defines_derives_from_the_root() -> None:
    outside = []
    for name in medfed_modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            defined_here = cls.__module__ == name and not cls_name.startswith("_")
            if defined_here and issubclass(cls, BaseException) and not issubclass(cls, MedfedError):
                outside.append(f"{name}.{cls_name}")

    assert outside == []


def test_the_user_errors_are_the_concrete_kinds_under_user_error() -> None:
    assert all(issubclass(kind, UserError) and kind is not UserError for kind in USER_ERRORS)
