"""The fleet hub: consumes every replica's events from Kafka into PostgreSQL and serves lookup, review and audit for the fleet."""
