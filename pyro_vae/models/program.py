"""Models of your own by import path: ``model.program = "module:Class"`` located, vetted, imported and built.

Building a program runs its code, so it happens in three steps, and the caller
decides between the first two whether the code may run:

1. :func:`locate` finds the module's file in the given folders, then the
   installed packages, and hashes it; nothing is imported.
2. the caller's ``vet(source)`` accepts the source or raises (a run folder's
   program is vetted by ``store/trust.py``; a config the user trains is not);
3. the module is imported from exactly that file, and only a latent-variable
   class defined in it (or a function defined in it whose return annotation
   names one) is called.

Every way this can fail is one line naming ``model.program`` and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.machinery
import inspect
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import PyroVAEError, did_you_mean
from .protocol import check_protocol


@dataclass(frozen=True)
class ProgramSource:
    """Where a program's module was found, before anything of it runs."""

    program: str  # "module:Class"
    module: str
    file: Optional[Path]  # the module's file (None: a built-in module, or a namespace package)
    sha256: Optional[str]  # of the file's bytes
    folder: Optional[Path]  # the caller's folder it was found in; None: found among the installed packages

    @property
    def key(self) -> str:
        return f"model.program = {self.program!r}"


def _error_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same(a: Optional[os.PathLike], b: Optional[os.PathLike]) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def installed_path(exclude: Sequence[Path] = ()) -> List[str]:
    """``sys.path`` without the current directory (``''``, ``.`` or its absolute path) and the ``exclude`` folders:
    where "the installed packages" are looked up, so that a file that happens to lie in the working directory or
    in a received folder is never taken for one."""
    banned = [Path.cwd().resolve(), *(Path(p).resolve() for p in exclude)]
    kept = []
    for entry in sys.path:
        if entry in ("", "."):
            continue
        try:
            if Path(entry).resolve() in banned:
                continue
        except OSError:
            continue
        kept.append(entry)
    return kept


def _find_spec(module: str, path: Sequence[str]):
    """The spec of ``module`` on ``path``, walking packages through their folders: no ``__init__`` runs."""
    parts = module.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], list(path))
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    return spec


def locate(program: str, folders: Sequence[Path] = (), exclude: Sequence[Path] = ()) -> ProgramSource:
    """Find the file ``program``'s module would be imported from: ``folders`` first, then the installed packages
    (never the current directory or ``exclude``); nothing is imported."""
    module, _, _ = program.partition(":")
    key = f"model.program = {program!r}"
    folders = [Path(f) for f in folders if Path(f).is_dir()]
    if module in sys.builtin_module_names:
        return ProgramSource(program, module, None, None, None)
    searched = [str(f) for f in folders]
    spec = _find_spec(module, searched)
    folder = None
    if spec is not None:
        top = module.split(".")[0]
        folder = next(f for f in folders if _find_spec(top, [str(f)]) is not None)
    else:
        spec = _find_spec(module, installed_path(exclude))
    if spec is None:
        where = ", ".join(repr(str(f)) for f in folders)
        top = module.split(".")[0]
        raise PyroVAEError(f"{key}: no module named {module!r} in {where + ' or ' if where else ''}the installed "
                           f"packages: check the name before ':', or put {top}.py next to the config file")
    file = Path(spec.origin).resolve() if spec.origin and Path(spec.origin).is_file() else None
    return ProgramSource(program, module, file, file_sha256(file) if file else None, folder)


def _import(source: ProgramSource, exclude: Sequence[Path]):
    """Import ``source.module`` from the file :func:`locate` found, and from nowhere else."""
    key = source.key
    top = source.module.split(".")[0]
    loaded = sys.modules.get(source.module)
    if loaded is not None and source.file is not None and not _same(getattr(loaded, "__file__", None), source.file):
        # Python keeps one module per name: the one imported first would be used silently
        raise PyroVAEError(f"{key}: module {source.module!r} is already imported from "
                           f"{getattr(loaded, '__file__', '?')!r}, not from {str(source.file)!r}: give the model's "
                           f"module a name of its own")
    folders = [str(source.folder)] if source.folder is not None else []
    saved = sys.path[:]
    sys.path[:] = folders + installed_path(exclude)  # the module's own imports see what locate searched
    try:
        module = importlib.import_module(source.module)
    except ModuleNotFoundError as e:
        raise PyroVAEError(f"{key}: importing {source.module!r} failed ({_error_line(e)}): install what it "
                           f"imports") from None
    except Exception as e:  # the user's module raised while it was imported
        raise PyroVAEError(f"{key}: importing {source.module!r} failed ({_error_line(e)}): fix the module") from None
    finally:
        sys.path[:] = saved
    if source.file is not None and not _same(getattr(module, "__file__", None), source.file):
        raise PyroVAEError(f"{key}: {top!r} was imported from {getattr(module, '__file__', '?')!r}, not from the "
                           f"checked file {str(source.file)!r}: give the model's module a name of its own")
    return module


def _attribute(module, source: ProgramSource):
    obj = module
    attr = source.program.partition(":")[2]
    for part in attr.split("."):
        # getattr_static: a module-level __getattr__ or a property is code, and none may run before the checks
        try:
            obj = inspect.getattr_static(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise PyroVAEError(f"{source.key}: {getattr(obj, '__name__', source.module)!r} has no attribute {part!r}: "
                               f"{did_you_mean(part, names)}check the name after ':'") from None
    return obj


def _model_class(obj, module, source: ProgramSource) -> type:
    """The latent-variable class ``obj`` is or returns, checked without calling anything; else one line.

    Only a class defined in the named module, or a function defined there whose return annotation names a class,
    passes: ``os:system``, ``subprocess:getoutput`` or ``builtins:eval`` are refused before they could run.
    """
    key, attr = source.key, source.program.partition(":")[2]
    fix = "name a class with model() and guide() methods (see examples/custom_model.py)"
    if getattr(obj, "__module__", None) != module.__name__:
        where = getattr(obj, "__module__", None)
        raise PyroVAEError(f"{key}: {attr!r} is not defined in {module.__name__!r}"
                           f"{f' (it comes from {where!r})' if where else ''}: {fix}, in the module that defines it")
    if inspect.isclass(obj):
        cls = obj
    elif inspect.isfunction(obj):
        try:
            cls = typing.get_type_hints(obj).get("return")
        except Exception:  # an annotation that does not resolve names no class
            cls = None
        if not inspect.isclass(cls):
            raise PyroVAEError(f"{key}: {attr!r} is a function whose return annotation names no model class, so "
                               f"pyro_vae cannot check what it builds before calling it: {fix}, or annotate the "
                               f"function's return type with it")
    else:
        raise PyroVAEError(f"{key}: {attr!r} is a {type(obj).__name__}, not a class: {fix}")
    missing = [m for m in ("model", "guide") if not callable(getattr(cls, m, None))]
    if missing:
        raise PyroVAEError(f"{key}: {cls.__name__} is not a latent-variable model: it has no "
                           f"{' or '.join(f'{m}()' for m in missing)} method; {fix}")
    return cls


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def build_program(spec, data_dim: int, folders: Sequence[Path] = (), exclude: Sequence[Path] = (),
                  vet: Optional[Callable[[ProgramSource], None]] = None):
    """(the model ``spec.program`` builds for ``data_dim`` columns, ``spec`` with where it came from).

    ``folders`` are searched before the installed packages (never the current
    directory or ``exclude``); ``vet`` sees the located source before any of
    its code runs.  The constructor gets ``spec.args`` as keyword arguments,
    and ``data_dim`` when its signature takes it.  The returned spec records
    the module's folder, file and sha256.
    """
    source = locate(spec.program, folders, exclude)
    if vet is not None:
        vet(source)
    module = _import(source, exclude)
    factory = _attribute(module, source)
    _model_class(factory, module, source)
    if isinstance(factory, (staticmethod, classmethod)):
        factory = factory.__func__
    key = source.key
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
    recorded = dict(program_file=str(source.file) if source.file else None, program_sha256=source.sha256)
    if source.folder is not None:
        recorded["program_dir"] = str(source.folder.resolve())
    return model, dataclasses.replace(spec, **recorded)

