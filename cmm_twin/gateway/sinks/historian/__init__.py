"""Historian sinks: InfluxDB v2 and the embedded SQLite time-series store."""
