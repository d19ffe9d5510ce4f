"""Sinks: where result records go (OPC UA, MES, historian). Each implements `Sink`."""
