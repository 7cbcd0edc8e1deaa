"""Where weight files come from: an explicit path, then the torch hub cache; never a download.

One resolver for every weights file of the project (generator checkpoints, VGG19, AlexNet,
Inception): ``resolve_weights`` returns the file to load or ``None`` when nothing is there (the
caller decides whether a fallback such as seeded random weights is allowed), and
``missing_weights_error`` is the one-line message that says where to put the file.
"""
from __future__ import annotations

import os
from pathlib import Path

from bench.errors import UserError


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()/checkpoints``), without importing torch."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home is None:
        xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
        torch_home = os.path.join(xdg, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def resolve_weights(explicit: str | os.PathLike | None, hub_files: tuple[str, ...] = (), *,
                    option: str = "") -> Path | None:
    """The weights file to load: ``explicit`` if given, else the first of ``hub_files`` in the hub cache.

    Args:
        explicit: a path the user gave (``--set METHOD.KEY=PATH``, ``--fid-weights``); must exist.
        hub_files: file names torchvision/torch-fidelity use in the hub cache, in order of preference.
        option: how the user sets the path (``ours.vgg_weights``), named in the error.
    Returns:
        the resolved path, or None when ``explicit`` is None and no hub file exists.
    Raises:
        UserError: ``explicit`` does not name an existing file.
    """
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"{option + ': ' if option else ''}weights file {path} not found; pass an existing file")
        return path.resolve()
    folder = hub_checkpoint_dir()
    for name in hub_files:
        if (folder / name).is_file():
            return folder / name
    return None


def missing_weights_error(what: str, hub_file: str, option: str, extra: str = "") -> UserError:
    """The one-line error for weights found neither by path nor in the hub cache."""
    return UserError(f"{what} not found: put {hub_file} in {hub_checkpoint_dir()} (the torch hub cache) or pass "
                     f"{option}=PATH{'; ' + extra if extra else ''} (nothing is downloaded)")
