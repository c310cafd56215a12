"""campaigns' public surface: what the console, the composition root and the other packages call.

The work is done in the sub-packages (authoring, planning, delivery, measurement); this module names the functions
meant for use from outside campaigns, so a caller never reaches into a sub-package.
"""

from __future__ import annotations

import polars as pl

from campaigns.authoring.campaigns import (
    campaign_versions,
    create_campaign,
    describe,
    get_campaign,
    install_defaults,
    list_campaigns,
    parse_spec,
    set_status,
    update_campaign,
)
from campaigns.authoring.spec import CampaignSpec
from campaigns.authoring.templates import (
    find_template,
    get_template,
    list_templates,
    message_context,
    preview_template,
    save_template,
    unsubscribe_url,
)
from campaigns.delivery.outbox import depth as outbox_depth
from campaigns.delivery.outbox import list_messages, messages_json
from campaigns.delivery.tasks import OUTCOMES as CALL_OUTCOMES
from campaigns.delivery.tasks import claim_task, list_tasks, record_outcome
from campaigns.journeys.definitions import install_defaults as install_default_journeys
from campaigns.journeys.definitions import list_journeys
from campaigns.journeys.reports import enrollments_of as customer_journeys
from campaigns.journeys.reports import funnel as journey_funnel
from campaigns.journeys.reports import simulate as simulate_journey
from campaigns.journeys.reports import uplift_members as journey_members
from campaigns.journeys.runtime import backlog as journey_backlog
from campaigns.journeys.runtime import run_once as run_journeys_once
from campaigns.journeys.runtime import serve as serve_journeys
from campaigns.measurement.reports import campaign_reports
from campaigns.measurement.uplift_store import (
    campaign_members,
    current_uplift_models,
    fit_uplift_models,
    score_uplift,
)
from campaigns.planning.explain import dry_run, eligibility
from campaigns.planning.plans import (
    latest_planned_send,
    next_occurrence,
    plan_ahead,
    plan_campaign,
    plan_due,
    shop_today,
)
from campaigns.profile import (
    campaign_erasure,
    campaign_export,
    contact_history_section,
    discount_budget_section,
)

__all__ = [
    "outbox_depth", "journey_backlog",
    "customer_journeys", "install_default_journeys", "journey_funnel", "list_journeys", "run_journeys_once", "serve_journeys",
    "simulate_journey", "customer_id_of",
    "CALL_OUTCOMES", "CampaignSpec", "campaign_reports", "claim_task", "list_tasks", "record_outcome", "campaign_erasure", "campaign_export", "campaign_versions", "contact_history_section", "create_campaign",
    "describe", "discount_budget_section", "dry_run", "eligibility", "find_template", "get_campaign",
    "get_template", "install_defaults", "latest_planned_send", "list_campaigns", "list_messages",
    "list_templates", "message_context", "messages_json", "next_occurrence", "parse_spec", "plan_ahead",
    "plan_campaign", "plan_due", "preview_template", "save_template", "set_status", "shop_today",
    "unsubscribe_url", "update_campaign", "campaign_members_for_uplift", "score_uplift", "train_uplift", "uplift_models",
]


def customer_id_of(session, external_id: str) -> int:
    """A customer's row id by external id (NotFound otherwise)."""
    from crm.service import customer_by_external_id

    return customer_by_external_id(session, external_id).id


def campaign_members_for_uplift(session, ctx) -> pl.DataFrame:
    """Campaigns' measured arm members (treated vs holdout, converted, segment) that uplift models learn from."""
    return campaign_members(session, ctx)


def train_uplift(session, ctx, actor: str = "scheduler") -> list[dict]:
    """Fit the uplift models from every campaign's and journey's past arms (treated vs holdout)."""
    members = pl.concat([campaign_members(session, ctx), journey_members(session, ctx)])
    return fit_uplift_models(session, ctx, members, actor)


def uplift_models(session) -> list[dict]:
    """The current uplift model of every segment, with how it measured on held-out members."""
    return [{"id": m.id, "segment": m.segment, "trained_at": m.trained_at.isoformat(), "members": m.members,
             "metrics": m.metrics} for m in current_uplift_models(session)]
