"""The virtual clock: every action of a round placed on time (the simulator's and the planner's).

:func:`schedule` places a recorded round (the simulator's clock); :func:`sweep` is its loop.
The planner clocks a compressed round: :class:`BlockClock` block by block, jumping over
periodic copies, else :class:`FlatRound` and :func:`flat_makespans` over the whole round;
:func:`makespans` picks between them and :func:`expand` unrolls every copy.
"""

from flexpl.costs.clock.blocks import BlockClock, expand, makespans
from flexpl.costs.clock.schedule import (
           FlatRound,
           flat_makespans,
           schedule,
           schedule_range,
           slice_trace,
           sweep,
)

__all__ = ["BlockClock", "FlatRound", "expand", "flat_makespans", "makespans", "schedule", "schedule_range",
           "slice_trace", "sweep"]
