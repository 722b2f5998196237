"""Looking inside any model: ``summary`` (shapes, parameters, FLOPs, memory), ``trace`` (a printing
forward) and ``diagram`` (an interactive HTML architecture graph).

Split by role, as torchinfo: :mod:`.collect` runs the model under hooks, :mod:`.records` holds one
module call, :mod:`.totals` the whole-model figures, :mod:`.format` prints them, :mod:`.flops` the
FLOP formulas, :mod:`.diagram` renders the graph. None of these change the model they are given.
"""

from .diagram import diagram
from .summary import Summary, summary
from .trace import Trace, trace

__all__ = ["Summary", "summary", "Trace", "trace", "diagram"]
