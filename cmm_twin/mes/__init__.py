"""The mock MES: an aiohttp service that validates, de-duplicates and durably stores result records.

`server` holds the application and its OpenAPI document, `validation` the strict record checks,
`store` the SQLite store, `cli` the command line of `mock_mes.py`.
"""
