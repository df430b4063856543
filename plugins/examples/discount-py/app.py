"""Pricing plugin in Python: half price on weekends, and a job's `discount` tag.

Built into a WebAssembly component by componentize-py (see build.sh), against
the world `pricing` of `allot:plugin@0.2.0`. The decision itself lives in
policy.py; this module only converts between the WIT types and it.

`price` returns `result<u64, string>`: in Python the method returns the
price as an `int`, and raises `componentize_py_types.Err(message)` for the
error case (any other exception is a trap). `componentize-py --wit-path
../../wit/v0.2.0 --world pricing bindings DIR` writes the types out to read.

Bound by an operator (globally or for a tenant) its prices bill; bound by a
tenant for itself they are that tenant's showback, recorded beside the bill
(see docs/plugins.md, "The trust model").
"""

from componentize_py_types import Err

import wit_world
from wit_world import PricingRequest
from wit_world.imports import log

import policy


class WitWorld(wit_world.WitWorld):
    def price(self, request: PricingRequest) -> int:
        try:
            return policy.price(request.list_price_minor, request.start_ms, dict(request.tags))
        except ValueError as e:
            log.log(log.Level.WARN, f"{request.tenant}/{request.project}: {e}")
            raise Err(str(e))
