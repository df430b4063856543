"""Tests of the gpu-cap decision: `python3 -m unittest` in this directory."""

import unittest
from fractions import Fraction

from policy import ALLOW, DENY, HOLD, MS_PER_HOUR, decide


class DecideTest(unittest.TestCase):
    def test_a_cpu_only_job_is_always_allowed(self):
        self.assertEqual(decide("vision", Fraction(0), Fraction(4), 10**12), (ALLOW, None))

    def test_a_job_larger_than_the_cap_is_denied(self):
        verdict, reason = decide("interns", Fraction(2), Fraction(0), 0)
        self.assertEqual(verdict, DENY)
        self.assertEqual(reason, "the job asks for 2 GPUs; project interns may hold at most 1")

    def test_a_job_past_the_cap_with_what_is_held_waits(self):
        self.assertEqual(decide("vision", Fraction(1), Fraction(3), 0), (ALLOW, None))
        verdict, reason = decide("vision", Fraction(1, 4), Fraction(4), 0)
        self.assertEqual(verdict, HOLD)
        self.assertEqual(reason, "project vision holds 4 of its 4 GPUs; the job asks for 1/4 more")

    def test_fractions_add_up_exactly(self):
        # Seven 1g.10gb slices are one GPU: 3 + 6/7 + 1/7 is 4, within the cap.
        self.assertEqual(decide("vision", Fraction(1, 7), Fraction(27, 7), 0), (ALLOW, None))

    def test_a_project_out_of_gpu_hours_waits_for_the_next_month(self):
        verdict, _ = decide("vision", Fraction(1), Fraction(0), 100 * MS_PER_HOUR)
        self.assertEqual(verdict, HOLD)
        self.assertEqual(decide("vision", Fraction(1), Fraction(0), 100 * MS_PER_HOUR - 1)[0], ALLOW)


if __name__ == "__main__":
    unittest.main()
