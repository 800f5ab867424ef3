"""Sluice's schema migrations, shipped as package data so an installed wheel has them.

``postgres/NNNN_name.sql`` and ``clickhouse/NNNN_name.*`` are read (never imported as
modules of this package) by :mod:`storage.migrations`, which finds them next to the
``storage`` package: the checkout's ``migrations/`` folder, or ``site-packages/migrations``
once installed. ``pyproject.toml`` lists the files to ship under
``[tool.setuptools.package-data]``; a new kind of migration file must be added there.
"""
