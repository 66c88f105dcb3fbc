"""The app streams (`app-<id>`): loaded and folded into an `AppState`, appended with the read
model `apps.apps` applied in the same transaction (libs/events/repository.py).

A concurrent writer makes an append fail with `ChangedMeanwhile`; a second app at a taken
location (held by an app, services/apps/state.py) breaks the primary key `apps_location_held`
of the read model's `apps.locations` and fails with `LocationTaken`; a host port another app
holds breaks `apps_port_held` of `apps.ports` and fails with `PortTaken`.
"""

from __future__ import annotations

from libs.events.repository import Repository
from libs.events.store import PostgresEventStore
from services.apps.errors import ChangedMeanwhile, LocationTaken, PortTaken
from services.apps.events import app_stream
from services.apps.projections import AppsProjection
from services.apps.state import AppState, fold

__all__ = ["AppStreams", "app_streams"]

AppStreams = Repository[AppState]


def app_streams(store: PostgresEventStore) -> AppStreams:
    """The repository of the app streams in `store`."""
    return Repository(
        store,
        stream_of=app_stream,
        fold=fold,
        projection=AppsProjection(),
        conflict=ChangedMeanwhile,
        unique={"apps_location": LocationTaken, "apps_port": PortTaken},
    )
