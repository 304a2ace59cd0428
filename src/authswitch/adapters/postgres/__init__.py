"""Postgres: the source of truth. Pool, migrations, the catalogue store and the group
committer live here; nothing else in authswitch sends SQL."""
