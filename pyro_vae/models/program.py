"""Models of your own by import path: ``model.program = "module:Class"`` imported, built with ``model.args``, checked.

The module is looked up in ``model.program_dir`` (the TOML file's folder), then
the current directory, then the installed packages.  Every way this can fail
(no such module, a module that fails to import, no such attribute, a
constructor that raises, an object that is not a latent-variable model) is one
line naming ``model.program`` and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import inspect
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import PyroVAEError, did_you_mean
from .protocol import check_protocol


def _search_path(program_dir: Optional[str]) -> List[Path]:
    folders = [Path(program_dir)] if program_dir else []
    return folders + [Path.cwd()]


def _error_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _same_file(a: Optional[str], b: Optional[str]) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _import(module_name: str, key: str, folders: List[Path]):
    top = module_name.split(".")[0]
    found = importlib.machinery.PathFinder.find_spec(top, [str(f) for f in folders])
    loaded = sys.modules.get(top)
    if found is not None and loaded is not None and not _same_file(found.origin, getattr(loaded, "__file__", None)):
        # Python keeps one module per name: the one imported first would be used silently
        raise PyroVAEError(f"{key}: module {top!r} is already imported from {getattr(loaded, '__file__', '?')!r}, "
                           f"not from {found.origin!r}: give the model's module a name of its own")
    sys.path[:0] = [str(f) for f in folders]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            where = ", ".join(repr(str(f)) for f in folders)
            raise PyroVAEError(f"{key}: no module named {e.name!r} in {where} or the installed packages: check the "
                               f"name before ':', or put {top}.py next to the config file") from None
        raise PyroVAEError(f"{key}: importing {module_name!r} failed ({_error_line(e)}): install what it imports") from None
    except Exception as e:  # the user's module raised while it was imported
        raise PyroVAEError(f"{key}: importing {module_name!r} failed ({_error_line(e)}): fix the module") from None
    finally:
        for f in folders:
            sys.path.remove(str(f))


def _root_folder(module, module_name: str) -> Optional[Path]:
    """The folder that made ``module_name`` importable (None for a module without a file)."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    root = Path(file).resolve().parent
    depth = module_name.count(".") + (1 if Path(file).name == "__init__.py" else 0)
    for _ in range(depth):
        root = root.parent
    return root


def import_program(program: str, program_dir: Optional[str] = None, key: str = "model.program") -> Tuple[object, Optional[Path]]:
    """The class (or function) ``program`` names, and the folder it was imported from if it is one searched."""
    key = f"{key} = {program!r}"
    module_name, _, attr = program.partition(":")
    folders = _search_path(program_dir)
    module = _import(module_name, key, folders)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise PyroVAEError(f"{key}: {getattr(obj, '__name__', module_name)!r} has no attribute {part!r}: "
                               f"{did_you_mean(part, names)}check the name after ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PyroVAEError(f"{key}: {attr!r} is a {type(obj).__name__}, not a class or function: name the class that "
                           "builds the model")
    root = _root_folder(module, module_name)
    searched = {f.resolve() for f in folders}
    return obj, root if root is not None and root in searched else None


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def build_program(spec, data_dim: int):
    """(the model ``spec.program`` builds for ``data_dim`` columns, ``spec`` with the folder it came from).

    The constructor gets ``spec.args`` as keyword arguments, and ``data_dim``
    when its signature takes it.
    """
    factory, root = import_program(spec.program, spec.program_dir)
    key = f"model.program = {spec.program!r}"
    kwargs = dict(spec.args)
    if _takes(factory, "data_dim"):
        if "data_dim" in kwargs:
            raise PyroVAEError("model.args.data_dim: pyro_vae passes the data's number of columns as data_dim itself: "
                               "remove it from [model.args]")
        kwargs["data_dim"] = int(data_dim)
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    name = getattr(factory, "__name__", spec.program)
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's constructor: its own error, in one line
        raise PyroVAEError(f"{key}: {name}({shown}) failed ({_error_line(e)}): fix [model.args] or the constructor") from None
    try:
        check_protocol(model)
    except PyroVAEError as e:
        raise PyroVAEError(f"{key}: {e}") from None
    if root is not None and spec.program_dir != str(root):
        spec = dataclasses.replace(spec, program_dir=str(root))
    return model, spec
