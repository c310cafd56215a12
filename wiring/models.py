"""Every package's tables in one metadata: Alembic and the schema tests compare it with the database."""

from __future__ import annotations

from sqlmodel import SQLModel

import campaigns.models
import churn.models
import crm.models
import kit.models
import segmentation.models

MODEL_MODULES = (kit.models, crm.models, segmentation.models, churn.models, campaigns.models)


def all_metadata():
    """The metadata holding every package's tables (all models modules are imported above)."""
    return SQLModel.metadata
