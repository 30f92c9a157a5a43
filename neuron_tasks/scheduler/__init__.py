"""The scheduler process: APScheduler on an elected leader fires periodic jobs exactly once.

`neuron-tasks scheduler [MODULES...]` runs one node; run several for failover (a Postgres
advisory lock elects the leader). Declare periodic actors with `@periodic(every=N)` or
`@periodic(cron="...")`, or in a TOML file (`--config`). See scheduler/node.py.
"""

from neuron_tasks.scheduler.jobs import ScheduledJob, periodic
from neuron_tasks.scheduler.settings import SchedulerSettings

__all__ = ["ScheduledJob", "SchedulerSettings", "periodic"]
