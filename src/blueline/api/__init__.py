"""The transport boundary: GraphQL over HTTP and WebSocket, webhooks, health, metrics."""
