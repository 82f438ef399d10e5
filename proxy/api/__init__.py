"""The admin REST API of the original service (FastAPI routers)."""
