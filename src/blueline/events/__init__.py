"""Live updates: the bus between processes, local fan-out, and each subscriber's stream."""
