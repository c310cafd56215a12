"""The journeys the shop's plans describe (installed with the campaigns' defaults; every number is editable)."""

from __future__ import annotations

from typing import Any

ORDER_GOAL = {"kind": "order"}

DEFAULT_JOURNEYS: list[dict[str, Any]] = [
    {"name": "Abandoned cart",
     "description": "Items added to the cart and no order within 1 h: a push reminder then; an SMS with a coupon "
                    "valid 24 h (within the ceilings) a day later. Ends at an order.",
     "entry": {"trigger": {"kind": "event", "event": "cart_add", "unless": {"kind": "order", "within_minutes": 60}},
               "reentry": {"rule": "every", "days": 3}},
     "goal": ORDER_GOAL, "priority": 70,
     "steps": [
         {"id": "push_1h", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}],
          "next": "wait_23h"},
         {"id": "wait_23h", "type": "wait", "duration": {"hours": 23}, "next": "sms_coupon"},
         {"id": "sms_coupon", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}],
          "offer": {"amount_off": 20, "min_spend": 200, "valid_days": 1, "coupon_prefix": "CART",
                    "send_without_offer": True}},
     ]},
    {"name": "7-day onboarding",
     "description": "Signup: a welcome on day 0, a first-order incentive on day 3, a reminder on day 7 (at 10:00 in "
                    "the customer's zone). Ends at the first order.",
     "entry": {"trigger": {"kind": "signup"}, "reentry": {"rule": "once"}},
     "goal": {"kind": "first_order"}, "priority": 65,
     "steps": [
         {"id": "welcome", "type": "send", "channels": [{"channel": "email", "template": "welcome"},
                                                        {"channel": "push", "template": "welcome"}],
          "next": "wait_3d"},
         {"id": "wait_3d", "type": "wait", "duration": {"days": 3}, "next": "morning_3"},
         {"id": "morning_3", "type": "wait", "until_local_time": "10:00", "next": "incentive"},
         {"id": "incentive", "type": "send", "channels": [{"channel": "email", "template": "first_order_incentive"}],
          "offer": {"amount_off": 30, "min_spend": 200, "valid_days": 7, "coupon_prefix": "HELLO",
                    "send_without_offer": True}, "next": "wait_4d"},
         {"id": "wait_4d", "type": "wait", "duration": {"days": 4}, "next": "reminder"},
         {"id": "reminder", "type": "send", "channels": [{"channel": "push", "template": "onboarding_reminder"},
                                                         {"channel": "email", "template": "first_order_incentive"}]},
     ]},
    {"name": "Post-purchase repeat",
     "description": "After an order: a review request 3 days later, a cross-sell a week later, and a repeat "
                    "incentive when the customer's own purchase gap (mean days between their orders, 10 to 90; 30 "
                    "for a first order) has passed since it. Ends at the next order.",
     "entry": {"trigger": {"kind": "order"}, "reentry": {"rule": "unlimited"}},
     "goal": ORDER_GOAL, "priority": 40,
     "steps": [
         {"id": "wait_delivery", "type": "wait", "duration": {"days": 3}, "next": "review"},
         {"id": "review", "type": "send", "channels": [{"channel": "email", "template": "review_request"}],
          "next": "wait_week"},
         {"id": "wait_week", "type": "wait", "duration": {"days": 4}, "next": "cross_sell"},
         {"id": "cross_sell", "type": "send", "channels": [{"channel": "email", "template": "cross_sell"}],
          "next": "wait_gap"},
         {"id": "wait_gap", "type": "wait", "purchase_gap": {"fallback_days": 30, "min_days": 10, "max_days": 90},
          "next": "repeat_incentive"},
         {"id": "repeat_incentive", "type": "send", "channels": [{"channel": "push", "template": "at_risk_care"},
                                                                 {"channel": "email", "template": "at_risk_care"}],
          "offer": {"percent_off": 5, "valid_days": 14, "coupon_prefix": "AGAIN", "send_without_offer": True}},
     ]},
    {"name": "Churn-warning staged recall",
     "description": "Flagged at risk: a caring message; 3 days without an order, a coupon; 7 more days, a call "
                    "task for VIP and potential customers, an email for the others. Ends at an order.",
     "entry": {"trigger": {"kind": "at_risk"}, "reentry": {"rule": "every", "days": 60}},
     "goal": ORDER_GOAL, "priority": 75,
     "steps": [
         {"id": "care", "type": "send", "channels": [{"channel": "push", "template": "at_risk_care"},
                                                     {"channel": "email", "template": "at_risk_care"}],
          "next": "wait_3d"},
         {"id": "wait_3d", "type": "wait", "duration": {"days": 3}, "next": "coupon"},
         {"id": "coupon", "type": "send", "channels": [{"channel": "sms", "template": "at_risk_care"},
                                                       {"channel": "email", "template": "at_risk_care"}],
          "offer": {"percent_off": 10, "valid_days": 14, "coupon_prefix": "CARE", "send_without_offer": True},
          "next": "wait_7d"},
         {"id": "wait_7d", "type": "wait", "duration": {"days": 7}, "next": "valued"},
         {"id": "valued", "type": "branch", "condition": "tier_in", "value": ["VIP", "potential"],
          "then": "call", "else": "last_email"},
         {"id": "call", "type": "call", "template": "at_risk_care", "not_sent": "last_email"},
         {"id": "last_email", "type": "send", "channels": [{"channel": "email", "template": "at_risk_care"}]},
     ]},
    {"name": "Win-back",
     "description": "Entered the lost tier: a returning-customer offer, and a second touch 14 days later.",
     "entry": {"trigger": {"kind": "entered_tier", "value": "lost"}, "reentry": {"rule": "every", "days": 90}},
     "goal": ORDER_GOAL, "priority": 30,
     "steps": [
         {"id": "offer", "type": "send", "channels": [{"channel": "email", "template": "lost_winback"}],
          "offer": {"percent_off": 15, "free_shipping": True, "valid_days": 14, "coupon_prefix": "BACK",
                    "send_without_offer": True}, "next": "wait_14d"},
         {"id": "wait_14d", "type": "wait", "duration": {"days": 14}, "next": "second"},
         {"id": "second", "type": "send", "channels": [{"channel": "push", "template": "at_risk_care"},
                                                       {"channel": "email", "template": "at_risk_care"}]},
     ]},
]
