"""Query, mutation and subscription resolvers: parse, call the domain, map to types."""
