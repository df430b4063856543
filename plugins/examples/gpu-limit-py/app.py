"""Admission plugin in Python: every job needs a `team` tag, and no job may ask
for more than 8 whole GPUs.

Built into a WebAssembly component by componentize-py (see build.sh), against
the world `admission` of `allot:plugin@0.2.0`. The decision itself lives in
policy.py; this module only converts between the WIT types and it.
"""

import wit_world
from wit_world import AdmissionDecision, AdmissionDecision_Accept, AdmissionDecision_Reject, AdmissionRequest
from wit_world.imports import log, types

import policy


class WitWorld(wit_world.WitWorld):
    def admit(self, request: AdmissionRequest) -> AdmissionDecision:
        job = request.job
        whole_gpus = job.gpu.value if isinstance(job.gpu, types.GpuRequest_Whole) else 0
        reason = policy.rejection(dict(job.tags), whole_gpus)
        if reason is None:
            return AdmissionDecision_Accept()
        log.log(log.Level.INFO, f"rejected {job.name!r} of {request.tenant}/{request.project}: {reason}")
        return AdmissionDecision_Reject(reason)
