"""Line events: the outbox written with each change, the relay, the bus and replay."""
