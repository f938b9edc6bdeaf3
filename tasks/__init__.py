"""Units of work. Each module holds plain functions; ``@task`` wrappers sit at the bottom."""
