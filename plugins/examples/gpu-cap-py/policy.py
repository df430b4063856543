"""The decision of the gpu-cap plugin, in plain Python so that it can be tested anywhere.

For a job that asks for GPUs (CPU-only jobs are always allowed):

- deny it if it asks for more GPUs than its project may ever hold (waiting
  cannot help);
- hold it while its project has used its GPU-hours this month (the period
  renews on the 1st, 00:00 UTC);
- hold it while the GPUs its project holds plus the ones it asks for would
  pass the project's cap;
- otherwise allow it.

GPUs are exact fractions (a quarter share is 1/4, a `1g.10gb` MIG slice 1/7):
`fractions.Fraction`, never floats.
"""

from fractions import Fraction
from typing import Optional, Tuple

#: GPUs a project may hold at once, the job being placed included.
DEFAULT_CAP = 4
#: Projects with a cap of their own.
PROJECT_CAPS = {"ml-research": 16, "interns": 1}
#: GPU-hours a project may use per calendar month (UTC).
GPU_HOURS_PER_MONTH = 100

MS_PER_HOUR = 60 * 60 * 1000

ALLOW = "allow"
DENY = "deny"
HOLD = "hold"


def cap_of(project: str) -> int:
    """The GPUs `project` may hold at once."""
    return PROJECT_CAPS.get(project, DEFAULT_CAP)


def decide(project: str, job_gpus: Fraction, held: Fraction, gpu_ms_in_period: int) -> Tuple[str, Optional[str]]:
    """(ALLOW, None), or (DENY or HOLD, the reason shown to the user).

    `job_gpus` is what the job will hold once placed; `held` what its project
    holds now; `gpu_ms_in_period` the project's GPU-milliseconds this month.
    """
    if job_gpus == 0:
        return ALLOW, None
    cap = cap_of(project)
    if job_gpus > cap:
        return DENY, f"the job asks for {job_gpus} GPUs; project {project} may hold at most {cap}"
    used_hours = Fraction(gpu_ms_in_period, MS_PER_HOUR)
    if used_hours >= GPU_HOURS_PER_MONTH:
        return HOLD, (
            f"project {project} has used its {GPU_HOURS_PER_MONTH} GPU-hours this month; "
            "it renews on the 1st, 00:00 UTC"
        )
    if held + job_gpus > cap:
        return HOLD, f"project {project} holds {held} of its {cap} GPUs; the job asks for {job_gpus} more"
    return ALLOW, None
