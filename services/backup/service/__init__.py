"""The backup service: settings, jobs (back up, restore, clone, verify, prune), schedule,
retention and the read model of pre-update snapshots waiting to be stored."""
