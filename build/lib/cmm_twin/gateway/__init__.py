"""The edge gateway: inbox ingestion, compensation, sink runner, OPC UA, HTTP."""
