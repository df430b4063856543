"""Quota plugin in Python: caps each project's GPUs and its GPU-hours per month.

Built into a WebAssembly component by componentize-py (see build.sh), against
the world `quota` of `allot:plugin@0.2.0`. The decision itself lives in
policy.py; this module only converts between the WIT types and it.

componentize-py names the WIT types in Python: the request is
`wit_world.QuotaRequest`, and each case of the `quota-decision` variant is a
class of its own, `QuotaDecision_Allow()`, `QuotaDecision_Deny(reason)` and
`QuotaDecision_Hold(reason)`. Shared types (`fraction`, `money`, `job-spec`)
are in `wit_world.imports.types`. `componentize-py --wit-path ../../wit/v0.2.0
--world quota bindings DIR` writes them all out to read.
"""

from fractions import Fraction

import wit_world
from wit_world import QuotaDecision, QuotaDecision_Allow, QuotaDecision_Deny, QuotaDecision_Hold, QuotaRequest
from wit_world.imports import log, types

import policy


def exact(f: types.Fraction) -> Fraction:
    return Fraction(f.numerator, f.denominator)


class WitWorld(wit_world.WitWorld):
    def check(self, request: QuotaRequest) -> QuotaDecision:
        # The job's own project is always in `projects`.
        usage = next(p.usage for p in request.projects if p.project == request.project)
        verdict, reason = policy.decide(
            request.project, exact(request.job_gpus), exact(usage.gpus_held), usage.gpu_ms_in_period
        )
        if verdict == policy.ALLOW:
            return QuotaDecision_Allow()
        log.log(log.Level.INFO, f"{verdict} {request.job.name!r} of {request.tenant}/{request.project}: {reason}")
        if verdict == policy.DENY:
            return QuotaDecision_Deny(reason)
        return QuotaDecision_Hold(reason)
