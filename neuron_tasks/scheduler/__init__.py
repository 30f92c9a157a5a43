"""The scheduler process: APScheduler on an elected leader fires periodic jobs, no tick twice.

`neuron-tasks scheduler [MODULES...]` runs one node; run several for failover (a Postgres
advisory lock elects the leader). The leader fires every part's periodic jobs (`Part.ticks`)
and the user's periodic actors, declared in MODULES or in a TOML file (`--config`):

    from neuron_tasks import periodic

    @periodic(every=60)            # or @periodic(cron="*/5 * * * *")
    @dramatiq.actor
    def report() -> None: ...

See scheduler/node.py.
"""

from neuron_tasks.scheduler.jobs import ScheduledJob, periodic
from neuron_tasks.scheduler.settings import SchedulerSettings

__all__ = ["ScheduledJob", "SchedulerSettings", "periodic"]
