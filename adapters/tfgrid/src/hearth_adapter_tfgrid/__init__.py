"""hearth-adapter-tfgrid: workspaces as VMs on ThreeFold's grid through its ComputeService."""

from .driver import TfgridConfig, TfgridDriver, TfgridFlags
from .simulator import Simulator

__all__ = ["Simulator", "TfgridConfig", "TfgridDriver", "TfgridFlags"]
