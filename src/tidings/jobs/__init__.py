"""Jobs: long-running tasks that stream their progress through the hub.

No ASGI here: ``tidings.server.jobs`` serves ``/api/jobs`` on top of :class:`Runner`.
"""

from tidings.jobs.registry import Jobs, JobSpec, Log, Parameter, Progress, Update
from tidings.jobs.runner import CHANNEL_PREFIX, Job, Runner, State

__all__ = [
    "CHANNEL_PREFIX",
    "Job",
    "JobSpec",
    "Jobs",
    "Log",
    "Parameter",
    "Progress",
    "Runner",
    "State",
    "Update",
]
