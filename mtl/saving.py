"""Moved to ``plmkit.saving`` (the folder format is shared by every method); re-exported here."""

from plmkit.saving import (  # noqa: F401
    CONFIG,
    WEIGHTS,
    BackboneMismatchError,
    ModuleFolderError,
    check_backbone,
    check_tensors,
    head_state,
    read_module_config,
    read_module_folder,
    read_weights,
    write_module_folder,
)
