"""The decision of the gpu-limit plugin, in plain Python so that it can be tested anywhere."""

from typing import Mapping, Optional

#: The most whole GPUs one job may ask for.
MAX_GPUS_PER_JOB = 8
#: The tag every job must carry.
TEAM_TAG = "team"


def rejection(tags: Mapping[str, str], whole_gpus: int) -> Optional[str]:
    """Why the job is rejected, or None to accept it.

    `tags` are the job's tags; `whole_gpus` is the number of whole GPUs it
    asks for (0 for a CPU-only job, a share or a MIG slice).
    """
    if not tags.get(TEAM_TAG, "").strip():
        return f"job needs a {TEAM_TAG} tag (add --tag {TEAM_TAG}=... to allot submit)"
    if whole_gpus > MAX_GPUS_PER_JOB:
        return (
            f"job asks for {whole_gpus} GPUs; at most {MAX_GPUS_PER_JOB} per job "
            "(split the work into several jobs)"
        )
    return None
