"""Tests of the gpu-limit decision: `python3 -m unittest` in this directory."""

import unittest

from policy import MAX_GPUS_PER_JOB, rejection


class RejectionTest(unittest.TestCase):
    def test_a_job_without_a_team_is_rejected(self):
        self.assertEqual(rejection({}, 1), "job needs a team tag (add --tag team=... to allot submit)")
        self.assertIsNotNone(rejection({"team": "  "}, 1))

    def test_a_job_with_a_team_within_the_limit_is_accepted(self):
        self.assertIsNone(rejection({"team": "nlp"}, MAX_GPUS_PER_JOB))
        self.assertIsNone(rejection({"team": "nlp"}, 0))

    def test_a_job_over_the_limit_is_rejected(self):
        self.assertEqual(
            rejection({"team": "nlp"}, 16),
            "job asks for 16 GPUs; at most 8 per job (split the work into several jobs)",
        )


if __name__ == "__main__":
    unittest.main()
