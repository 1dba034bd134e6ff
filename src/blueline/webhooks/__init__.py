"""Provider webhooks: Standard Webhooks signatures and the intake route."""
