"""The platform kernel every domain package stands on: config, database, identity, permissions,
audit, keys, file store and background jobs. It imports no domain package and no web edge."""
