"""The Starlette inference server. Importing it must not import Prefect or training code."""
