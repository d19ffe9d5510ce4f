"""Input side of the gateway: the inbox watcher and the CSV reader."""
