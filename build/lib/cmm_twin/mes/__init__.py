"""The mock MES: an aiohttp service that validates, de-duplicates and durably stores result records.

`server` holds the application (routes, auth, fault injection), `openapi` its HTTP contract and
OpenAPI document, `validation` the strict parsing of request bodies, `fields` the record's field
checks, `store` the SQLite store, `cli` the command line of `mock_mes.py`.
"""
