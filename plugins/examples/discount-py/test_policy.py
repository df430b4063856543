"""Tests of the discount decision: `python3 -m unittest` in this directory."""

import unittest

from policy import price

TUESDAY_9H = 1_794_906_000_000  # 2026-11-17T09:00Z
SATURDAY_9H = TUESDAY_9H + 4 * 24 * 3_600_000  # 2026-11-21T09:00Z


class PriceTest(unittest.TestCase):
    def test_a_weekday_piece_costs_its_list_price(self):
        self.assertEqual(price(400, TUESDAY_9H, {}), 400)

    def test_a_weekend_piece_costs_half(self):
        self.assertEqual(price(400, SATURDAY_9H, {}), 200)
        self.assertEqual(price(400, SATURDAY_9H + 24 * 3_600_000 + 3_599_999, {}), 200)  # Sunday 09:59:59.999
        self.assertEqual(price(400, SATURDAY_9H + 39 * 3_600_000, {}), 400)  # Monday 00:00

    def test_a_discount_tag_takes_its_percent_off_and_rounds_half_to_even_once(self):
        self.assertEqual(price(400, TUESDAY_9H, {"discount": "15"}), 340)
        # 5 x 1/2 x 90% = 2.25 -> 2; 7 x 1/2 = 3.5 -> 4; 5 x 1/2 = 2.5 -> 2.
        self.assertEqual(price(5, SATURDAY_9H, {"discount": "10"}), 2)
        self.assertEqual(price(7, SATURDAY_9H, {}), 4)
        self.assertEqual(price(5, SATURDAY_9H, {}), 2)
        self.assertEqual(price(400, TUESDAY_9H, {"discount": "100"}), 0)

    def test_a_malformed_discount_is_an_error(self):
        for bad in ("", "-5", "101", "ten", "1.5"):
            with self.assertRaises(ValueError):
                price(400, TUESDAY_9H, {"discount": bad})


if __name__ == "__main__":
    unittest.main()
