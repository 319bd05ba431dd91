"""hearth-adapter-tfgrid: workspaces as VMs on ThreeFold's grid through its ComputeService."""

import typing

from ._driver import TfgridConfig, TfgridDriver, TfgridFlags

if typing.TYPE_CHECKING:
    from ._simulator import Simulator


def __getattr__(name: str) -> typing.Any:
    # The simulator (uvicorn, starlette) is imported on first use only: the adapter never needs it.
    if name == "Simulator":
        from ._simulator import Simulator

        return Simulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Simulator", "TfgridConfig", "TfgridDriver", "TfgridFlags"]
