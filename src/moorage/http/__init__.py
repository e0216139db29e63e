"""The HTTP edge: route table, access decision point, handlers. The only aiohttp importer."""
