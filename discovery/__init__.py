"""Service discovery: the endpoint model, the agent that keeps endpoints in a datastore under leases, and
publishing in the formats other tools read (SkyDNS keys for CoreDNS, Consul's agent API)."""
