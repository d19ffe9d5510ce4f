"""Input side of the gateway: the inbox, the pipeline from a file to records, the physics bridge."""
