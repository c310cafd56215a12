"""Journeys: event-triggered, multi-step automation under the campaigns' guard rails and outbox."""
