"""Development tools, apart from the mover: local PostgreSQL clusters (``pgcluster``), the
GitLab-shaped fixture data (``seed``, its SQL in ``sql/``), the local sandbox (``sandbox``) and the
demo (``demo``). Nothing in the mover's core imports this package."""
