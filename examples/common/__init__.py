"""What the FastAPI and aiohttp examples share: models, schemas, the import logic, the database."""
